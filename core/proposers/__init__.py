"""Proposers for the layer-rate search: LLM backends (openai, llama-cpp, vllm), the numeric GA, replay.

Import the submodules you need; nothing heavy (llama_cpp, openai, vllm) is imported here.
"""
from .base import CallSink, Proposer, ProposerError
from .parse import ParseResult, RawCandidate, parse_reply
from .repair import RepairError, is_valid, key, random_vector, repair

__all__ = ["CallSink", "Proposer", "ProposerError", "ParseResult", "RawCandidate", "parse_reply", "RepairError",
           "is_valid", "key", "random_vector", "repair"]
