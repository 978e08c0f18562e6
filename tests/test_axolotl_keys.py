"""Each applied Axolotl key changes what training gets: the TrainingArguments / TRL config the children build, the
PEFT config and model-loading options, the accelerate config file of the training child, or the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from newt.config import parse_recipe
from newt.train import args as train_args

BASE = "base_model: builtin:tiny-llama\ndatasets: [{path: d.jsonl}]\nmax_steps: 10\n"


def recipe(extra: str = ""):
    return parse_recipe(BASE + extra)


def training_arguments(extra: str, tmp_path: Path, *, has_eval: bool = False):
    """The TrainingArguments a child builds for this recipe on CPU (transformers validates the combination)."""
    from transformers import TrainingArguments

    kwargs = train_args.training_kwargs(recipe(extra), tmp_path / "checkpoints", has_eval=has_eval, cuda=False)
    return kwargs, TrainingArguments(**kwargs)


def test_cadence_keys(tmp_path: Path) -> None:
    kw, ta = training_arguments("val_set_size: 0.1\nsaves_per_epoch: 4\nsave_total_limit: 2\nevals_per_epoch: 5\n",
                                tmp_path, has_eval=True)
    # with max_steps set, Axolotl's per-epoch counts are shares of all steps (transformers' float form)
    assert ta.save_steps == 0.25 and ta.save_total_limit == 2
    assert ta.eval_strategy == "steps" and ta.eval_steps == 0.2
    kw, ta = training_arguments("val_set_size: 0.1\neval_steps: 7\nsave_steps: 3\n", tmp_path, has_eval=True)
    assert (ta.eval_steps, ta.save_steps) == (7, 3)
    by_epoch = parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\nnum_epochs: 2\nsaves_per_epoch: 2\n")
    epochs = train_args.training_kwargs(by_epoch, tmp_path, cuda=False)
    assert epochs["save_steps"] == 0.25  # 1 / (2 saves × 2 epochs)
    # no held-out rows: nothing to evaluate, as in Axolotl
    kw, ta = training_arguments("evals_per_epoch: 5\n", tmp_path, has_eval=False)
    assert ta.eval_strategy == "no"


def test_schedule_and_optimizer_keys(tmp_path: Path) -> None:
    kw, ta = training_arguments(
        "warmup_ratio: 0.1\ncosine_min_lr_ratio: 0.1\nmax_grad_norm: 0.3\nadam_beta1: 0.8\nadam_beta2: 0.95\n"
        "adam_epsilon: 1.0e-6\nneftune_noise_alpha: 5\noptimizer: adamw_torch_fused\n"
        "gradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: false}\n", tmp_path)
    assert ta.warmup_steps == 0.1 and ta.get_warmup_steps(100) == 10
    assert ta.lr_scheduler_type == "cosine_with_min_lr" and ta.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert (ta.max_grad_norm, ta.adam_beta1, ta.adam_beta2, ta.adam_epsilon) == (0.3, 0.8, 0.95, 1e-6)
    assert ta.neftune_noise_alpha == 5 and ta.optim == "adamw_torch_fused"
    assert ta.gradient_checkpointing_kwargs == {"use_reentrant": False}
    kw, ta = training_arguments("lr_scheduler_kwargs: {num_cycles: 0.3}\n", tmp_path)
    assert ta.lr_scheduler_kwargs == {"num_cycles": 0.3}


def test_an_8bit_optimizer_is_named_when_this_machine_cannot_run_it(tmp_path: Path) -> None:
    from newt.train.hardware import check_settings

    for name in ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"):
        r = recipe(f"optimizer: {name}\n")
        assert train_args.training_kwargs(r, tmp_path, cuda=True)["optim"] == name
        assert f"optimizer: {name} is a bitsandbytes optimizer and runs on CUDA GPUs only; use adamw_torch on " \
               "this machine" in check_settings(r, cuda=False)
    assert check_settings(recipe("optimizer: adamw_torch_8bit\n"), cuda=False) == []  # torchao's runs anywhere
    assert check_settings(recipe("optimizer: galore_adamw\n"), cuda=True) == [
        "optimizer: galore_adamw needs the galore_torch package, which is not installed; install it, or use "
        "adamw_torch"]


def test_precision_keys(tmp_path: Path) -> None:
    import torch

    assert train_args.model_kwargs(recipe("bf16: auto\n"), cuda=False)["dtype"] == torch.float32
    assert train_args.model_kwargs(recipe("bf16: true\n"), cuda=False)["dtype"] == torch.bfloat16
    assert train_args.model_kwargs(recipe("bfloat16: true\n"), cuda=False)["dtype"] == torch.bfloat16
    kw = train_args.training_kwargs(recipe("fp16: true\ntf32: true\n"), tmp_path, cuda=True)
    assert kw["fp16"] is True and kw["bf16"] is False and kw["tf32"] is True


def test_attention_keys() -> None:
    for extra, kernel in (("flash_attention: true\n", "flash_attention_2"), ("sdp_attention: true\n", "sdpa"),
                          ("flex_attention: true\n", "flex_attention"), ("eager_attention: true\n", "eager"),
                          ("attention: flash\n", "flash_attention_2"), ("attention: flex\n", "flex_attention")):
        assert train_args.model_kwargs(recipe(extra), cuda=False)["attn_implementation"] == kernel, extra


def test_model_config_sets_config_attributes_of_the_base(tiny) -> None:
    from newt.models import load_model

    kwargs = train_args.model_kwargs(recipe("model_config: {rms_norm_eps: 0.001, use_cache: false}\n"), cuda=False)
    model = load_model("builtin:tiny-llama", **kwargs)
    assert model.config.rms_norm_eps == 0.001 and model.config.use_cache is False
    assert tiny[0].config.rms_norm_eps != 0.001


def test_load_in_8bit_loads_an_8bit_base() -> None:
    q = train_args.model_kwargs(recipe("load_in_8bit: true\n"), cuda=True)["quantization_config"]
    assert q.load_in_8bit is True and q.load_in_4bit is False


@pytest.fixture(scope="module")
def tiny():
    from newt.models import load_model, load_tokenizer

    return load_model("builtin:tiny-llama"), load_tokenizer("builtin:tiny-llama")


def wrapped(model, extra: str) -> set[str]:
    """Names of the modules PEFT wraps with LoRA for this recipe."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**train_args.lora_kwargs(recipe(extra), model)))
    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}


def test_lora_target_keys(tiny) -> None:
    model, _ = tiny
    attn = {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "k", "v", "o")}
    mlp = {f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")}
    assert wrapped(model, r"lora_target_modules: 'model.layers.\d+.self_attn.(q|k|v|o)_proj'" + "\n") == attn
    assert wrapped(model, "lora_target_modules: [q_proj, v_proj]\n") == {n for n in attn if n[-6] in "qv"}
    assert wrapped(model, "lora_target_linear: true\n") == attn | mlp
    # lora_target_linear with a list: every linear layer plus the listed modules (here one that is not linear)
    both = train_args.lora_kwargs(recipe("lora_target_linear: true\nlora_target_modules: [embed_tokens]\n"), model)
    assert both["target_modules"] == sorted(["down_proj", "embed_tokens", "gate_proj", "k_proj", "o_proj",
                                             "q_proj", "up_proj", "v_proj"])
    kw = train_args.lora_kwargs(recipe("peft_use_dora: true\npeft_use_rslora: true\nlora_fan_in_fan_out: true\n"))
    assert (kw["use_dora"], kw["use_rslora"], kw["fan_in_fan_out"]) == (True, True, True)


def test_special_tokens_tokens_and_eot_tokens_change_the_tokenizer_and_model(tiny) -> None:
    import copy

    from newt.tokens import apply_tokens, prepare_tokens

    model, tokenizer = copy.deepcopy(tiny[0]), copy.deepcopy(tiny[1])
    before = len(tokenizer)
    r = recipe("special_tokens: {pad_token: '<pad>', eos_token: '<|im_end|>'}\ntokens: ['<tool>', '</tool>']\n"
               "eot_tokens: ['<|eot|>']\nadapter: lora\n")
    new_ids = prepare_tokens(r, tokenizer, model)
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<|im_end|>"
    assert [tokenizer.convert_ids_to_tokens(i) for i in new_ids] == ["<pad>", "<|eot|>", "<tool>", "</tool>"]
    assert new_ids == list(range(before, before + 4))
    assert "<|eot|>" in tokenizer.all_special_tokens  # eot tokens are special: never split, skippable
    assert tokenizer("<tool>x</tool>", add_special_tokens=False)["input_ids"][0] == new_ids[2]
    assert model.get_input_embeddings().weight.shape[0] == before + 4
    assert model.get_output_embeddings().weight.shape[0] == before + 4
    # the new rows are trained: LoRA trains the embedding and the output head in full
    kw = train_args.lora_kwargs(r, model, new_ids)
    assert kw["modules_to_save"] == ["embed_tokens", "lm_head"]
    # the same recipe applied to the prepared stage's tokenizer gives the same ids (one function)
    again = copy.deepcopy(tiny[1])
    assert apply_tokens(r, again) == new_ids


def test_eot_tokens_must_be_the_turn_ends_masking_uses(tiny) -> None:
    import copy

    from newt.masking import Masker
    from newt.tokens import apply_tokens, check_turn_ends

    tokenizer = copy.deepcopy(tiny[1])
    ok = recipe("eot_tokens: ['<|im_end|>']\n")
    apply_tokens(ok, tokenizer)
    masker = Masker(tokenizer)
    check_turn_ends(ok, masker.boundaries, tokenizer)  # the tiny ChatML template ends turns with <|im_end|>
    with pytest.raises(ValueError, match=r"eot_tokens \['<\|endoftext\|>'\] are not the turn ends the chat template "
                                         "gives roles assistant, .*; set role_boundaries"):
        check_turn_ends(recipe("eot_tokens: ['<|endoftext|>']\n"), masker.boundaries, tokenizer)


def test_deepspeed_and_fsdp_become_the_accelerate_config_file(tmp_path: Path) -> None:
    from newt.train import accelerate_command
    from newt.train.launch_config import accelerate_config

    r = recipe("adapter:\nnum_processes: 2\nfsdp_version: 2\nfsdp_config: {offload_params: true, "
               "transformer_layer_cls_to_wrap: LlamaDecoderLayer, state_dict_type: FULL_STATE_DICT}\n")
    cmd = accelerate_command(r, ["--x"], cuda=True, workdir=tmp_path)
    config_file = Path(cmd[cmd.index("--config_file") + 1])
    assert config_file == tmp_path / "accelerate_config.yaml"
    written = yaml.safe_load(config_file.read_text())
    assert written == {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_machines": 1, "num_processes": 2,
        "machine_rank": 0, "use_cpu": False,
        "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                        "fsdp_offload_params": True, "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                        "fsdp_state_dict_type": "FULL_STATE_DICT"},
    }
    v1 = accelerate_config(recipe("fsdp: [full_shard, auto_wrap, offload]\nfsdp_config: {fsdp_sync_module_states: "
                                  "true}\n"))["fsdp_config"]
    assert v1 == {"fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_offload_params": True,
                  "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_sync_module_states": True}
    # Axolotl's shipped file name (absent here) → newt's preset of that ZeRO stage; a real JSON file is passed on
    ds = accelerate_config(recipe("deepspeed: deepspeed_configs/zero3_bf16.json\n"))
    assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == 3
    own = tmp_path / "ds.json"
    own.write_text('{"zero_optimization": {"stage": 1}}')
    ds = accelerate_config(recipe(f"deepspeed: {own}\n"))
    assert ds["deepspeed_config"] == {"deepspeed_config_file": str(own)}
    # without deepspeed/fsdp nothing is written and the old launch stays
    assert "--config_file" not in accelerate_command(recipe(), ["--x"], cuda=False, workdir=tmp_path)


def test_kernels_are_applied_on_cuda_and_skipped_with_a_line_elsewhere(tmp_path: Path) -> None:
    r = recipe("plugins: [axolotl.integrations.liger.LigerPlugin, "
               "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin]\nliger_rope: true\n"
               "liger_fused_linear_cross_entropy: true\n")
    assert train_args.liger_config(r) == {"rope": True, "fused_linear_cross_entropy": True}
    assert "use_liger_kernel" not in train_args.training_kwargs(r, tmp_path, cuda=False)
    skipped = train_args.skipped_kernels(r, cuda=False)
    assert skipped[0].startswith("Liger kernels skipped: they need a CUDA GPU and the liger-kernel package")
    assert skipped[1].startswith("Cut Cross Entropy skipped: it needs a CUDA GPU and the cut-cross-entropy package")
    # the plugin alone switches on Liger's defaults
    assert train_args.liger_config(recipe("plugins: [axolotl.integrations.liger.LigerPlugin]\n")) == {
        "rope": True, "rms_norm": True, "swiglu": True, "fused_linear_cross_entropy": True}


def test_orpo_simpo_cpo_build_trls_experimental_configs(tmp_path: Path) -> None:
    from newt.train import module_of
    from newt.train.orpo import method_kwargs

    base = "datasets: [{path: d.jsonl}]\n"
    orpo = recipe("rl: orpo\norpo_alpha: 0.2\n")
    Config, Trainer, kw = method_kwargs(orpo)
    config = Config(**train_args.training_kwargs(orpo, tmp_path, cuda=False), **kw)
    assert (Config.__name__, Trainer.__name__, config.beta, module_of(orpo)) == \
        ("ORPOConfig", "ORPOTrainer", 0.2, "newt.train.orpo")
    simpo = recipe("rl: simpo\nrl_beta: 2.0\nsimpo_gamma: 0.8\n")
    Config, Trainer, kw = method_kwargs(simpo)
    config = Config(**train_args.training_kwargs(simpo, tmp_path, cuda=False), **kw)
    assert (Trainer.__name__, config.loss_type, config.cpo_alpha, config.simpo_gamma, config.beta) == \
        ("CPOTrainer", "simpo", 0.0, 0.8, 2.0)
    cpo = recipe("rl: cpo\ncpo_alpha: 0.5\n")
    Config, _, kw = method_kwargs(cpo)
    assert Config(**train_args.training_kwargs(cpo, tmp_path, cuda=False), **kw).cpo_alpha == 0.5
    assert base  # the same datasets key as the other recipes


def test_loss_watchdog_stops_a_diverging_run() -> None:
    [dog] = train_args.callbacks(recipe("loss_watchdog_threshold: 5.0\nloss_watchdog_patience: 2\n"))

    class State:
        global_step = 7

    dog.on_log(None, State, None, logs={"loss": 6.0})
    dog.on_log(None, State, None, logs={"loss": 4.0})  # back under: the count restarts
    dog.on_log(None, State, None, logs={"loss": 6.0})
    with pytest.raises(RuntimeError, match="loss_watchdog: loss 6.5000 stayed above loss_watchdog_threshold 5.0 "
                                           "for 2 logged steps"):
        dog.on_log(None, State, None, logs={"loss": 6.5})
    assert train_args.callbacks(recipe()) == []


def test_unfrozen_parameters_freeze_everything_else_in_a_full_fine_tune(tiny) -> None:
    import copy

    model = copy.deepcopy(tiny[0])
    kept = train_args.freeze_except(model, [r"^model\.layers\.1\..*", r"^lm_head\..*"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith(("model.layers.1.", "lm_head."))}
    assert trainable == expected and kept == len(expected) == 10  # 9 tensors of layer 1 and the head
    with pytest.raises(ValueError, match="match no parameter of the model"):
        train_args.freeze_except(model, ["^vision_tower"])


def test_group_by_length_and_resize_to_32x(tiny, tmp_path: Path) -> None:
    import copy

    from newt.tokens import prepare_tokens

    kw, ta = training_arguments("group_by_length: true\n", tmp_path)
    assert ta.train_sampling_strategy == "group_by_length"
    model, tokenizer = copy.deepcopy(tiny[0]), copy.deepcopy(tiny[1])
    assert model.get_input_embeddings().weight.shape[0] == 260
    assert prepare_tokens(recipe("resize_token_embeddings_to_32x: true\nadapter:\n"), tokenizer, model) == []
    assert model.get_input_embeddings().weight.shape[0] == 288 and model.get_output_embeddings().weight.shape[0] == 288
