"""The block form (spg_module='block', the paper's Sec. 4.3): temporary modules made of copies of the model's last
block. Checked on a BERT-like classifier, a causal LM and a torchvision-style ResNet named with spg_head: the copies
start as the identity, training with them checkpoints, resumes and saves a plain model, zero weights train as
Trainer, and every HF head family either reaches the form (its copies reproduce the model's logits) or is refused by
name, as the README lists them."""

from __future__ import annotations

import copy
import re

import numpy
import pytest
import torch
import transformers
from datasets import Dataset
from helpers import (
    REPO,
    WORKERS,
    assert_trained_alike,
    greedy_lm_dataset,
    losses,
    no_dropout,
    text_dataset,
    tiny_bert,
    tiny_model,
    torchrun,
    training_args,
)
from safetensors.torch import load_file
from test_heads import ONE_CLASS_PER_FAMILY, auto_class, build, model_inputs, train_dataset

from bench.image_resnet_digits import CifarResNet, ImageClassifier
from spg_hf import SPGTrainer
from spg_hf.heads.blocks import block_call_arguments, block_copies
from spg_hf.spg import BlockModule, block_output
from spg_hf.trainer.checkpoints import SPG_WEIGHTS_NAME

BLOCK = dict(spg_module="block")
RESUMED_RUN = dict(max_steps=4, save_strategy="steps", save_steps=2, seed=3)


def resnet() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(CifarResNet(blocks_per_stage=2))


def image_dataset(size: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(size, 3, 16, 16, generator=generator).numpy(),
            "labels": torch.randint(0, 10, (size,), generator=generator).tolist(),
        }
    ).with_format("numpy")


# name -> (model, dataset, settings): the three the issue names.
MODELS = {
    "bert": (tiny_bert, text_dataset, {}),
    "causal_lm": (lambda: tiny_model("LlamaForCausalLM"), greedy_lm_dataset, {}),
    "resnet": (resnet, image_dataset, {"spg_head": "net.fc"}),
}


class ChainAtEnd(transformers.TrainerCallback):
    """The chain's weights at the end of training, before the trainer throws them away."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state_dict = {k: v.detach().clone() for k, v in model.spg_chain.state_dict().items()}


def trainer_for(name: str, output_dir, *settings: dict, model=None, dataset=None, **overrides) -> SPGTrainer:
    build_model, build_dataset, own = MODELS[name]
    return SPGTrainer(
        model=model if model is not None else build_model(),
        args=training_args(output_dir, BLOCK, own, *settings, **overrides),
        train_dataset=dataset if dataset is not None else build_dataset(),
    )


def with_copies_after_the_last_block(model: torch.nn.Module, family, inputs: dict, count: int = 2) -> tuple:
    """The model's own outputs, and its outputs with a block module of `count` zeroed copies (no dropout) run after
    its last block, in eval mode."""
    site = family.block
    module = BlockModule(block_copies(model, site, count), 0.0, site.gated).eval()

    def insert(block, args, kwargs, output):
        hidden = module(block_output(output), *block_call_arguments(args, kwargs))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    model.eval()
    with torch.no_grad():
        own = model(**inputs)
        handle = model.get_submodule(site.block).register_forward_hook(insert, with_kwargs=True)
        try:
            inserted = model(**inputs)
        finally:
            handle.remove()
    return own, inserted


def prediction(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, dict) and outputs.get("start_logits") is not None:
        return [outputs["start_logits"], outputs["end_logits"]]
    return [outputs["logits"]]


# ---- the copies start as the identity ----


def readme_block_families() -> set[str]:
    section = (REPO / "README.md").read_text().split("<!-- block-form families -->", 1)[1]
    return set(re.findall(r"`(\w+)`", section.split("<!-- /block-form families -->", 1)[0]))


def test_every_family_reaches_the_block_form_or_is_refused_by_name(tmp_path):
    reached, refused = set(), {}
    for family_name, (class_name, overrides) in sorted(ONE_CLASS_PER_FAMILY.items()):
        model = build(class_name, **overrides)
        try:
            trainer = SPGTrainer(model=model, args=training_args(tmp_path, BLOCK), train_dataset=train_dataset(model))
        except ValueError as error:
            assert "spg_module='block'" in str(error), (class_name, str(error))
            refused[family_name] = str(error)
            continue
        family = trainer._resolved_head[1]
        own, inserted = with_copies_after_the_last_block(model, family, model_inputs(model))
        for expected, computed in zip(prediction(own), prediction(inserted), strict=True):
            torch.testing.assert_close(computed, expected, rtol=1e-4, atol=1e-4, msg=class_name)
        reached.add(family_name)
    assert reached == readme_block_families(), sorted(refused)


def test_an_image_classifier_whose_head_follows_through_modules_reaches_the_form(tmp_path):
    # image_pooled's tested class (ConvNeXt) pools with a function and is refused; ViT's head reads the class token
    # after its final norm, which the form follows.
    model = build("ViTForImageClassification")
    trainer = SPGTrainer(model=model, args=training_args(tmp_path, BLOCK), train_dataset=train_dataset(model))
    family = trainer._resolved_head[1]
    assert (family.name, family.block.tail) == ("image_pooled", ("vit.layernorm", "[:, 0]"))
    own, inserted = with_copies_after_the_last_block(model, family, model_inputs(model))
    torch.testing.assert_close(inserted["logits"], own["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_modules_without_dropout_keep_every_survivor_at_the_first_step(tmp_path, name):
    # Identity copies predict what the model predicts: every trajectory that reaches module 1 reaches module 3, and
    # module 1's loss is the model's own on its survivors, through the chain path training takes.
    build_model, dataset, _ = MODELS[name]
    model = tiny_bert(**no_dropout()) if name == "bert" else build_model()
    data, batch_size = dataset(), 4
    if name == "resnet":
        # A random network gets random labels wrong: label one batch of 16 with its own predictions (its BatchNorm
        # normalises by that batch's statistics in training, so the batch is the whole set).
        pixels = torch.as_tensor(numpy.stack(data["pixel_values"]))
        predicted = copy.deepcopy(model).train()(pixel_values=pixels)["logits"].argmax(-1)
        data, batch_size = data.remove_columns("labels").add_column("labels", predicted.tolist()), len(data)
    trainer = trainer_for(
        name,
        tmp_path,
        model=model,
        dataset=data,
        spg_dropout=0.0,
        learning_rate=0.0,
        max_steps=1,
        per_device_train_batch_size=batch_size,
    )
    trainer.train()
    (log,) = [log for log in trainer.state.log_history if "spg/survival_1" in log]
    assert log["spg/survival_1"] > 0
    assert log["spg/survival_1"] == log["spg/survival_2"] == log["spg/survival_3"]
    assert log["spg/loss_1"] == pytest.approx(log["spg/loss_2"], rel=1e-5, abs=1e-6)


def test_post_norm_copies_are_gated_and_pre_norm_ones_are_zeroed(tmp_path):
    # A trained post-norm layer (BERT's) re-normalises: zeroed projections leave LayerNorm(LayerNorm(x)), so the
    # copies are mixed in by a zero gate. Pre-norm layers (Llama) and residual blocks are the identity as zeroed.
    post_norm = tiny_bert()
    with torch.no_grad():
        for module in post_norm.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    sites = {
        name: trainer_for(name, tmp_path, model=post_norm if name == "bert" else None)._resolved_head[1].block
        for name in MODELS
    }
    assert sites["bert"].block == "bert.encoder.layer.1" and sites["bert"].gated
    assert sites["bert"].zeroed == ("attention.output.dense", "output.dense")
    assert sites["causal_lm"].block == "model.layers.1" and not sites["causal_lm"].gated
    assert sites["causal_lm"].zeroed == ("self_attn.o_proj", "mlp.down_proj")
    assert sites["causal_lm"].tail == ("model.norm",)
    assert sites["resnet"].block == "net.layer3.1" and not sites["resnet"].gated
    assert sites["resnet"].zeroed == ("conv2", "bn2")
    assert (sites["resnet"].tail, sites["resnet"].flatten_from) == (("net.avgpool",), 1)
    # The gate and the copies behind it learn from the first steps on.
    trainer = trainer_for("bert", tmp_path, model=post_norm, spg_activation="none", spg_blocks_per_module=2)
    chain = ChainAtEnd()
    trainer.add_callback(chain)
    trainer.train()
    assert all(chain.state_dict[f"replicas.{t}.gate"] != 0 for t in range(3))
    assert not any(key.startswith("replicas.0.blocks.2.") for key in chain.state_dict)


# ---- training: checkpoints, resume, a plain saved model ----


@pytest.mark.parametrize("name", sorted(MODELS))
def test_block_form_checkpoints_resumes_and_saves_a_plain_model(tmp_path, name):
    def run(output_dir, resume=None):
        trainer = trainer_for(name, output_dir, RESUMED_RUN, spg_blocks_per_module=2)
        chain = ChainAtEnd()
        trainer.add_callback(chain)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, chain.state_dict

    full, full_chain = run(tmp_path / "full")
    saved_chain = load_file(tmp_path / "full" / "checkpoint-2" / SPG_WEIGHTS_NAME)
    assert any(key.startswith("replicas.2.blocks.1.") for key in saved_chain)
    resumed, resumed_chain = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert losses(resumed)[2:] == losses(full)[2:]
    for (key, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert full_chain.keys() == resumed_chain.keys()
    assert all(torch.equal(full_chain[key], resumed_chain[key]) for key in full_chain)

    full.save_model(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert not any("spg" in key for key in saved)
    assert not hasattr(full.model, "spg_chain")
    if name != "resnet":  # the HF models load with their plain Auto class, as trained
        reloaded = auto_class(full.model).from_pretrained(tmp_path / "saved")
        own = full.model.state_dict()
        assert all(torch.equal(tensor, own[key]) for key, tensor in reloaded.state_dict().items())


@pytest.mark.parametrize("name", ["bert", "resnet"])
def test_zero_weights_train_as_trainer(tmp_path, name):
    build_model, dataset, own = MODELS[name]
    plain = transformers.Trainer(
        model=build_model(),
        args=training_args(tmp_path / "plain", args_class=transformers.TrainingArguments),
        train_dataset=dataset(),
    )
    plain.train()
    spg = trainer_for(name, tmp_path / "spg", spg_weights=[0.0, 0.0, 0.0])
    spg.train()
    assert_trained_alike(plain, spg)


# ---- refusals, before training ----


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"spg_module": "linear", "spg_block": "net.layer3.1"}, "spg_block applies to spg_module='block'"),
        ({"spg_blocks_per_module": 0}, "spg_blocks_per_module must be >= 1"),
        ({"spg_attach": "pooled"}, "spg_module='block' runs it after"),
        ({"spg_module": "blocks"}, "spg_module must be one of"),
    ],
)
def test_bad_block_settings_are_refused_by_name(tmp_path, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        training_args(tmp_path, BLOCK, settings)


def test_blocks_the_form_cannot_follow_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=re.escape("spg_block='net.layer9': ImageClassifier has no such submodule")):
        trainer_for("resnet", tmp_path, spg_block="net.layer9")
    # A ResNet whose stages have one block each: the last block halves the feature map.
    one_block = ImageClassifier(CifarResNet(blocks_per_stage=1))
    with pytest.raises(ValueError, match=r"the last block `net\.layer3\.0` returns another shape"):
        trainer_for("resnet", tmp_path, model=one_block)
    # A block the head does not follow through modules alone: layer3's first block changes the shape after it.
    with pytest.raises(ValueError, match=r"the head's input is not what modules alone make of the output"):
        trainer_for("resnet", tmp_path, spg_block="net.layer2.1")


# ---- DDP ----


@pytest.mark.slow
def test_block_form_under_ddp_ends_with_identical_weights_on_both_ranks(tmp_path):
    result = torchrun(str(WORKERS / "block_form_worker.py"), "--output_dir", str(tmp_path))
    assert result.returncode == 0, f"DDP workers failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    rank_0, rank_1 = (load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2))
    assert rank_0.keys() == rank_1.keys()
    assert [key for key in rank_0 if not torch.equal(rank_0[key], rank_1[key])] == []
    # The zeroed output projections of every copy learned (their gradients went through DDP's all-reduce).
    zeroed = [key for key in rank_0 if key.startswith("spg_chain.") and key.endswith("output.dense.weight")]
    assert len(zeroed) == 6 and all(rank_0[key].abs().max() > 0 for key in zeroed)
