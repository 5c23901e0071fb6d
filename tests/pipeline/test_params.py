"""The pipeline parameter table and how the stages map it onto hone's configuration (pure functions)."""
from __future__ import annotations

import json

import pytest

from hone.errors import HoneError
from hone.pipeline import params as P
from hone.pipeline.params import training_params
from hone.pipeline.stages import job_options

DATA = {P.DATA_URI: "data.jsonl"}


def test_flavours_expose_man_or_all_parameters():
    minimal = P.params_for("osft-minimal")
    assert minimal and all("_man_" in p.name or p.name in P.MINIMAL["osft"] for p in minimal)
    assert "phase_02_train_man_unfreeze_rank_ratio" in [p.name for p in minimal]
    full = [p.name for p in P.params_for("osft")]
    assert set(p.name for p in minimal) < set(full)
    assert "phase_02_train_man_lora_r" not in full and "phase_02_train_man_lora_r" in [p.name for p in P.params_for("lora")]
    with pytest.raises(HoneError, match="did you mean 'osft-minimal'"):
        P.params_for("osft_minimal")


def test_per_algorithm_defaults():
    assert P.defaults("sft")["phase_02_train_man_workers"] == 4   # seed 004
    assert P.defaults("osft")["phase_02_train_man_workers"] == 1  # seed 001: OSFT runs on one node
    assert P.defaults("osft")["phase_02_train_opt_memory"] == "32Gi"
    assert P.defaults("lora")["phase_02_train_opt_learning_rate"] == 2e-4
    assert P.defaults("sft")["phase_04_registry_man_name"] == "sft-model"
    d = P.defaults("sft")
    d["phase_03_eval_man_tasks"].append("x")  # defaults are copies
    assert P.defaults("sft")["phase_03_eval_man_tasks"] == ["arc_easy"]


def test_resolve_coerces_text_and_accepts_upstream_aliases():
    v = P.resolve("osft", {**DATA, "phase_02_train_man_train_epochs": "3", "phase_02_train_opt_save_epoch": "false",
                           "phase_03_eval_man_tasks": "arc_easy, mmlu", "phase_03_eval_opt_gen_kwargs": '{"max_new_tokens": 9}',
                           "phase_02_train_man_unfreeze_rank_ratio": "0.3"})
    assert v["phase_02_train_man_epochs"] == 3 and v["phase_02_train_opt_save_epoch"] is False
    assert v["phase_03_eval_man_tasks"] == ["arc_easy", "mmlu"]
    assert v["phase_03_eval_opt_gen_kwargs"] == {"max_new_tokens": 9}
    assert v["phase_02_train_man_unfreeze_rank_ratio"] == 0.3


@pytest.mark.parametrize("given, match", [
    ({"phase_01_dataset_man_data_split": 0}, "data_split: Input should be greater than 0"),
    ({"phase_02_train_man_train_batch": 0}, "train_batch: Input should be greater than 0"),
    ({"phase_02_train_man_gpu": 0}, "man_gpu: Input should be greater than or equal to 1"),
    ({"phase_02_train_opt_num_procs": "many"}, "num_procs: Input should be a valid integer"),
    ({"phase_02_train_man_epochs": 1.5}, "expected an integer"),
    ({"phase_02_train_opt_save_epoch": "maybe"}, "expected true or false"),
    ({"phase_02_train_opt_lr_scheduler": "exponential"}, "unknown phase_02_train_opt_lr_scheduler 'exponential'"),
    ({"phase_03_eval_opt_limit": 0}, "limit: Input should be greater than 0"),
    ({"phase_03_eval_opt_batch": "0"}, "phase_03_eval_opt_batch"),
    ({"phase_03_eval_opt_verbosity": "LOUD"}, "unknown verbosity 'LOUD'(.|\n)*where: phase_03_eval_opt_verbosity"),
    ({"phase_03_eval_opt_model_args": "{bad json"}, "JSON object"),
    ({"phase_02_train_man_tokens": 100}, "phase_02_train_man_tokens \\(100\\) is smaller than "
                                         "phase_02_train_opt_max_seq_len"),
])
def test_resolve_rejects_bad_values(given, match):
    with pytest.raises(HoneError, match=match):
        P.resolve("sft", {**DATA, **given})


def test_token_values_are_redacted_in_errors_and_public_views():
    with pytest.raises(HoneError) as err:
        P.resolve("sft", {**DATA, "phase_02_train_opt_hf_token": ["hf_secret"]})
    assert "hf_secret" not in str(err.value)
    v = P.resolve("sft", {**DATA, "phase_02_train_opt_hf_token": "hf_secret"})
    assert P.public(v)["phase_02_train_opt_hf_token"] == "<redacted>"
    assert P.public(P.resolve("sft", DATA))["phase_02_train_opt_hf_token"] == ""


def test_training_params_map_onto_hone_names():
    v = P.resolve("osft", {**DATA, "phase_02_train_opt_save_samples": 300, "phase_02_train_man_train_batch": 128,
                           "phase_02_train_opt_target_patterns": "q_proj, v_proj", "phase_02_train_opt_num_procs": "2"})
    flat = training_params("osft", v, "d/train.jsonl", "out")
    assert flat["effective_batch_size"] == 128 and flat["max_tokens_per_gpu"] == 10000
    assert flat["save_samples"] == 300
    assert flat["target_patterns"] == ["q_proj", "v_proj"] and flat["unfreeze_rank_ratio"] == 0.25
    assert flat["nproc_per_node"] == "2" and flat["learning_rate"] == 5e-6
    assert "train_split_ratio" not in flat and "subset" not in flat  # the dataset stage applied them
    from hone.config import RunConfig

    cfg = RunConfig.from_flat("osft", flat)  # every name is a real training parameter
    assert cfg.train.save_samples == 300  # a Hugging Face checkpoint every 300 samples (samples_<N>)
    assert cfg.distributed.nproc_per_node == 2
    lora = training_params("lora", P.resolve("lora", {**DATA, "phase_02_train_opt_target_modules": "q_proj"}), "t", "o")
    assert lora["lora_r"] == 16 and lora["target_modules"] == ["q_proj"] and lora["nproc_per_node"] == "auto"
    assert RunConfig.from_flat("lora", lora).lora.target_modules == ["q_proj"]
    assert training_params("lora", P.resolve("lora", DATA), "t", "o")["target_modules"] is None  # "" = default


def test_job_options_from_the_seed_defaults():
    from hone.kube.config import KubeJobConfig

    opts = job_options(P.resolve("sft", DATA), pvc="ws", pvc_path="/workspace")
    job = KubeJobConfig.build(opts)
    assert job.num_nodes == 4 and job.num_procs_per_node == 1
    assert job.runtime == "training-hub"  # the upstream pipelines' ClusterTrainingRuntime
    assert job.resources_per_node["memory"] == "64Gi" and job.pvc == "ws"
    assert job.env["NCCL_DEBUG"] == "INFO"


def test_evaluation_errors_name_pipeline_parameters():
    err = P.in_pipeline_terms(HoneError("task missing", where="tasks (--tasks): arc_easy",
                                       fix="pass a directory with --include-path"))
    assert err.where == "tasks (phase_03_eval_man_tasks): arc_easy"
    assert err.fix == "pass a directory with phase_03_eval_opt_include_path"


def test_every_parameter_has_its_schema_fields_type_and_default_for_each_flavour():
    """The table only declares names: types and defaults come from the schema and the algorithm table, and
    every deliberate difference carries its reason."""
    from hone.config import ALGORITHMS

    for flavour in P.flavours():
        algorithm = P.flavour_algorithm(flavour)
        spec = ALGORITHMS[algorithm]
        for p in P.params_for(flavour):
            assert p.type is (p.codec.kfp_type or P.kfp_type_of(p.info.annotation)), p.name
            default = p.default_for(algorithm)
            if p.default is P._SCHEMA:
                expected = spec.default(p.schema, p.field_name)
                assert p.to_schema(default) == expected or (p.name == P.DATA_URI and default is None), p.name
            else:
                assert p.reason, f"{p.name}: a pipeline default that differs from the schema needs its reason"
            if default is not None:
                P.check_value(p, default, "default")  # every default passes the schema's own validation
            assert p.help == p.info.description, p.name


def test_each_stage_hashes_only_the_parameters_it_reads():
    values = P.resolve("sft", DATA)
    dataset = P.stage_params("dataset", values)
    assert "phase_02_train_opt_max_seq_len" not in dataset  # the dataset stage does not tokenize
    assert {"phase_01_dataset_man_data_split", "phase_02_train_opt_seed", P.DATA_URI} <= set(dataset)
    training = P.stage_params("training", values)
    assert "phase_02_train_opt_max_seq_len" in training and "phase_03_eval_man_tasks" not in training
    assert "phase_02_train_man_model" in P.stage_params("evaluation", values)


def test_docs_parameter_table_is_the_generated_one():
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "pipeline.md").read_text()
    assert P.markdown_table() in docs, "regenerate it: python -m hone.cli.stubgen"


def test_kfp_docs_flavour_table_is_the_generated_one():
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "kfp.md").read_text()
    assert P.flavour_table() in docs, "regenerate it: python -m hone.cli.stubgen"
    # every compiled flavour's parameter is in it, under the flavour's own spelling
    for flavour in P.flavours():
        for p in P.params_for(flavour):
            assert f"`{p.name_for(flavour)}`" in P.flavour_table()


def test_upstream_spellings_and_new_parameters_reach_training():
    v = P.resolve("osft", {**DATA, "phase_02_train_man_train_unfreeze": 0.4, "phase_02_train_opt_unmask": "true",
                           "phase_02_train_opt_lr_scheduler_kwargs": '{"num_cycles": 2}',
                           "phase_02_train_opt_lr_scheduler": "cosine_with_restarts",
                           "phase_02_train_opt_save_final": False, "phase_03_eval_man_eval_tasks": []})
    flat = training_params("osft", v, "d", "o")
    assert flat["unfreeze_rank_ratio"] == 0.4 and flat["unmask_messages"] is True
    assert flat["lr_scheduler_kwargs"] == {"num_cycles": 2} and flat["save_final_checkpoint"] is False
    lora = P.resolve("lora", {**DATA, "phase_02_train_opt_load_in_4bit": "false", "phase_02_train_opt_bf16": False,
                              "phase_02_train_opt_dataset_type": "alpaca", "phase_02_train_opt_field_output": "answer"})
    flat = training_params("lora", lora, "d", "o")
    assert flat["load_in_4bit"] is False and flat["bf16"] is False
    assert flat["dataset_type"] == "alpaca" and flat["field_output"] == "answer" and flat["field_input"] is None
    with pytest.raises(HoneError, match="phase_02_train_opt_lr_scheduler_kwargs"):
        P.resolve("osft", {**DATA, "phase_02_train_opt_lr_scheduler_kwargs": "{not json"})
    # a compiled flavour's defaults are the upstream pipeline's; the local runner keeps hone's
    tokens = P.BY_NAME["phase_02_train_man_tokens"]
    assert tokens.default_for("osft", "osft") == 64000 and tokens.default_for("osft") == 10000
    assert tokens.name_for("osft") == "phase_02_train_man_train_tokens" and tokens.name_for("sft") == tokens.name


def test_public_values_hide_signatures_credentials_and_secret_env_entries():
    v = P.resolve("sft", {P.DATA_URI: "https://user:pw123456@data.example.com/d.jsonl?X-Amz-Signature=abcdef123456&x=1",
                          "phase_02_train_opt_env_vars": "NCCL_DEBUG=INFO, WANDB_API_KEY=wandbsecret123456",
                          "phase_04_registry_opt_description": "tuned; token hf_abcdefghijklmnopqrstuvwx"})
    shown = P.public(v)
    text = json.dumps(shown)
    for secret in ("pw123456", "abcdef123456", "wandbsecret123456", "hf_abcdefghijklmnopqrstuvwx"):
        assert secret not in text, secret
    assert "data.example.com/d.jsonl" in shown[P.DATA_URI] and "NCCL_DEBUG=INFO" in shown["phase_02_train_opt_env_vars"]
    assert v["phase_02_train_opt_env_vars"].endswith("wandbsecret123456")  # the run itself still gets the value
