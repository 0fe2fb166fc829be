"""The config is declared once, in parts: the CLI, the TUI's command line, resume and the workbench key all read
the same declarations, and the flat stored shape is unchanged."""
import pickle
from dataclasses import fields

import pytest

from selfpruner.cli import build_parser
from selfpruner.commands.search import _search_settings
from selfpruner.core.config import PARTS, RESUMABLE, ConfigError, Placement, SearchConfig, part_fields
from selfpruner.core.layer_search.session import resume_config


def test_searchconfig_is_the_flat_union_of_the_parts():
    names = [f.name for f in fields(SearchConfig)]
    assert names == [f.name for f in part_fields(*PARTS)] + ["sessions_dir"]
    assert len(set(names)) == len(names)  # no setting declared in two parts


def test_cli_defaults_are_the_config_defaults_and_every_setting_is_an_option():
    args = build_parser().parse_args(["search"])
    assert SearchConfig(**_search_settings(args)) == SearchConfig()
    args = build_parser().parse_args(["search", "--ratio", "0.4", "-K", "7", "--no-final", "--batch-size", "auto",
                                      "--compensate", "--race", "512:all,1024:1", "--no-crossover"])
    cfg = SearchConfig(**_search_settings(args))
    assert (cfg.beta, cfg.population, cfg.final_eval, cfg.batch_size, cfg.compensate) == (0.4, 7, False, None, True)
    assert (cfg.budget_tokens, cfg.mutations, cfg.crossovers) == (1024, 20, 0)


def test_what_a_resume_may_change_is_declared_with_the_settings():
    # how long it runs and how it ends, the proposer's process, where the model runs (not its dtype), the cluster
    assert RESUMABLE == {"generations", "final_tokens", "final_eval", "llm_threads", "max_retries", "device",
                         "device_map", "batch_size", "base_url", "llm_concurrency", "vllm_gpu_share", "workers",
                         "ray_address", "gpus_per_worker"}


def test_resume_refuses_a_setting_outside_the_resumable_parts(tmp_path):
    from selfpruner.core.store import Store
    cfg = SearchConfig(model="m", proposer="numeric", generations=2, dtype="float32")
    with Store.new_session(tmp_path, "layer", cfg.to_dict(), model_name="m", model_fingerprint="f") as st:
        sid = st.session_id
    got, _ = resume_config(sid, str(tmp_path), {"generations": 5, "batch_size": 4, "workers": 2})
    assert (got.generations, got.batch_size, got.workers, got.beta) == (5, 4, 2, 0.3)
    with pytest.raises(ConfigError, match="--seq-len cannot change"):
        resume_config(sid, str(tmp_path), {"seq_len": 256})
    with pytest.raises(ConfigError, match="--dtype cannot change"):
        resume_config(sid, str(tmp_path), {"dtype": "bfloat16"})


def test_the_workbench_key_follows_the_parts_it_depends_on():
    base = SearchConfig(model="m")
    assert base.workbench_key() == SearchConfig(model="m", population=3, beta=0.5).workbench_key()
    other_batch = SearchConfig(model="m", batch_size=4).workbench_key()
    assert other_batch != base.workbench_key() and other_batch[1].loads_same_model_as(base.workbench_key()[1])
    assert not SearchConfig(model="m", dtype="bfloat16").part(Placement).loads_same_model_as(base.part(Placement))
    assert SearchConfig(model="m", seq_len=256).workbench_key() != base.workbench_key()
    hash(base.workbench_key())


def test_the_config_pickles_for_ray_and_validates_choices_from_the_declarations():
    cfg = SearchConfig(beta=0.25, race="512:all,1024:1")
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(ConfigError, match="--selection must be llm or inline"):
        SearchConfig(selection="tournament").validate()
    with pytest.raises(ConfigError, match="--bos must be auto, on or off"):
        SearchConfig(bos="maybe").validate()


def test_tui_command_line_presets_the_form_from_the_same_declarations():
    from tui.app import build_parser as tui_parser
    args = tui_parser().parse_args(["--ratio", "0.45", "--proposer", "numeric", "--dtype", "float32"])
    assert (args.beta, args.proposer, args.dtype, args.data) == (0.45, "numeric", "float32", "auto")
    with pytest.raises(SystemExit):
        tui_parser().parse_args(["--proposer", "replay"])  # started from a stored session, not the form
