"""selfpruner's core: everything but the user interfaces (no UI imports anywhere below).

The map, one package per concern; each imports only the ones listed before it. Five imports go the other way,
each made lazily inside the function that needs it: `config` parses a `--race` spec with
`layer_search.racing`, `model.models` loads an exported checkpoint with `results.pruned_modeling`,
`proposers.registry` builds the metric search's LLM proposer from `metric_search.metric_writers`,
`layer_search.workbench` asks `baselines.rates` for the uniform/OWL rates a report draws against, and
`layer_search.speed_budget` measures a missing cost table with `results.cost_probes`.

- top level: `config` (SearchConfig as the union of small frozen parts: what is pruned, placement, data, fitness,
  evolution, proposer, cluster; each setting declares its CLI flag, form label and whether a resume may change
  it), `errors` (UserError, the base of every error
  whose one-line message tells the user what to fix), `types` (plain data between searches, proposers and the
  store), `plans` (which pruned model a rate vector stands for: the identity of a layer-rate candidate),
  `cost_table` (what a layer costs on a serving engine, and a --target-speedup budget predicted from it),
  `events` (what the core reports while it runs; the CLI and TUI only subscribe), `store` (one SQLite file per
  session; `store_errors`: why a DB cannot be used, in one line; `session_files` finds and lists them),
  `run_lock` (one process runs a session at a time) and `steering` (pause/resume/stop asked by another process
  through the session's control table).
- `model/`: a model as every stage sees it: loading HF dirs, hub ids and GGUFs (`models`; a GGUF dequantised
  once and cached, `gguf_cache`), WikiText-2 windows
  (`data`), calibration statistics (`calibration`), Wanda-sp and FLAP importance (`wanda_sp`, `flap`), structured
  pruning on one resident copy (`structured`), perplexity and KL (`evaluate`, `kl`).
- `proposers/`: shared by both searches: the registry of names (`registry`), the interface (`base`), the LLM
  backends (`llama_cpp_backend`, `openai_backend`, `vllm_backend`), the layer-rate LLM proposer with its parsing
  and repair (`llm`, `parse`, `repair`), the numeric GA (`numeric`) and replay (`replay`).
- `layer_search/`: Self-Pruner's search of layer rates: the loop (`self_pruner`), racing (`racing`), the one
  evaluator interface (`evaluator`: the final evaluation is written there once) with the resident workbench
  (`workbench`) and its Ray stand-in (`distributed`), starting/resuming a session (`session`) and its speed budget
  (`speed_budget`).
- `metric_search/`: Pruner-Zero's search of symbolic metrics: the expression trees (`expr*`), gradients,
  unstructured pruning, its prompts and the GP loop (`pruner_zero`), and its sessions (`session`, whose
  `Workspace` is an evaluator of the layer search's interface).
- `baselines/`: uniform, OWL and FLAP layer rates (`rates`) and a baseline evaluated and stored like a searched
  candidate (`run`).
- `results/`: what comes after a search: the physically smaller model (`export`, `pruned_modeling`,
  `session_export`), its GGUF for llama.cpp / Ollama (`gguf_export`) and its vLLM classes (`vllm_model`,
  registered by selfpruner/vllm_plugin.py; `served_families` says which families they serve; `vllm_runs` runs an
  engine), speed (`speed`; on llama.cpp `gguf_speed`; on vLLM `vllm_speed`), cost tables measured with probe
  models (`cost_probes`), zero-shot accuracy
  (`lm_eval_bridge`), LoRA recovery (`lora`), reports (`report`) and what a session says about itself
  (`session_summary`).
"""
