"""Proposers and their backends, shared by both searches: the interface (base), the registry of names, the LLM
proposer with its reply parsing and repair, the numeric GA, replay, and the llama.cpp / OpenAI / vLLM backends.

Import the submodules you need; nothing heavy (llama_cpp, openai, vllm) is imported here.
"""
