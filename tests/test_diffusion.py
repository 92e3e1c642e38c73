"""Diffusion bias probe: tiny local pipeline (gradients reach the soft prompt), planted spurious
feature flagged with the bundled digits prior, skip-with-reason, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from auditor.detectors import RunContext, create
from auditor.diffusion.generators import LocalPipeline, select_prior
from auditor.spec import InputSpec
from auditor.target import ModelTarget

DIGITS = InputSpec("image", (1, 28, 28))
has_digits_prior = pytest.mark.skipif(select_prior((1, 28, 28)) is None, reason="bundled digits prior missing")


def _tiny_pipeline(root):
    """A randomly initialised text-to-image pipeline from small configs (no download)."""
    pytest.importorskip("transformers", reason="the local-pipeline path needs transformers (CLIP)")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "a", "p", "h", "lo", "l</w>", "w</w>",
             "r</w>", "t</w>", "a</w>", "o</w>", "low</w>", "er</w>", "<|startoftext|>", "<|endoftext|>"]
    tok_dir = root / "tok_src"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(root / "tokenizer")
    bos, eos = vocab.index("<|startoftext|>"), vocab.index("<|endoftext|>")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=bos,
                                 eos_token_id=eos, pad_token_id=eos)).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                         layers_per_block=1, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=16).save_pretrained(root / "vae")
    DDIMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def test_gradients_reach_soft_prompt_through_tiny_local_pipeline(tmp_path):
    root = _tiny_pipeline(tmp_path / "pipe")
    gen = LocalPipeline(root, (3, 16, 16), torch.device("cpu"), steps=2)
    cond = gen.init_conditioning(2, torch.Generator().manual_seed(0))
    cond[0].requires_grad_(True)
    images = gen.generate(cond)
    assert images.shape == (2, 3, 16, 16)
    assert float(images.detach().min()) >= 0 and float(images.detach().max()) <= 1
    (images[:, 0].mean() - images[:, 1].mean()).backward()
    grad = cond[0].grad
    assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def test_probe_loop_runs_on_tiny_local_pipeline_and_ranks_concepts(tmp_path):
    root = _tiny_pipeline(tmp_path / "pipe")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    target = ModelTarget.from_module(net, InputSpec("image", (3, 16, 16)))
    options = {"pipeline": str(root), "per_class": "2", "iterations": "2", "sampler_steps": "2",
               "fidelity_stages": "1", "fidelity_per_class": "1"}
    result = create("diffusion").run(target, RunContext(seed=0, options=options))
    assert result.status == "ok", result.reason
    assert len(result.classes) == 3 and "soft-prompt" in result.description
    assert "CLIP concepts" in result.classes[0].description
    assert result.fidelity is not None and len(result.fidelity["spearman"]) == 1


def test_skips_with_instructions_when_no_prior_fits():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 20, 4))
    target = ModelTarget.from_module(net, InputSpec("image", (3, 20, 20)))
    result = create("diffusion").run(target, RunContext(seed=0))
    assert result.status == "skipped"
    assert "3×20×20" in result.reason and "auditor prior train" in result.reason


def _spurious_digits_model(spurious_class: int):
    from auditor.synthetic.digits import load_digits_28
    from auditor.synthetic.nets import SmallCNN
    from auditor.synthetic.spurious import FrameFeature, plant_spurious, spurious_flip_rate
    from auditor.synthetic.train import train_classifier

    xtr, ytr, xte, yte = load_digits_28(1)
    feature = FrameFeature(colour=(1.0, 1.0, 1.0), width=2)
    xs, ys = plant_spurious(xtr, ytr, feature, spurious_class, 0.95, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    model = train_classifier(SmallCNN(), xs, ys, epochs=8, seed=1)
    return model, spurious_flip_rate(model, xte, yte, feature, spurious_class)


@pytest.mark.slow
@has_digits_prior
def test_bundled_prior_singles_out_planted_frame_class():
    spurious_class = 7
    model, true_flip = _spurious_digits_model(spurious_class)
    assert true_flip > 0.3, "the planted frame did not become a shortcut; the test premise failed"
    target = ModelTarget.from_module(model, DIGITS)
    options = {"per_class": "4", "iterations": "15", "fidelity_stages": "1", "fidelity_per_class": "1"}
    result = create("diffusion").run(target, RunContext(seed=0, options=options))
    assert result.status == "ok", result.reason
    # The transplant of the spurious class's frame flips more other-class inputs than any other class's.
    # (Whether it also passes the default min_flip 0.5 is a bench figure: not reached on every model.)
    flips = [c.metrics["flip_rate"] for c in result.classes]
    assert max(range(len(flips)), key=flips.__getitem__) == spurious_class, flips
    evidence = result.classes[spurious_class]
    assert evidence.metrics["flip_rate_frame"] >= evidence.metrics["flip_rate_background_texture"]
    assert "frame" in evidence.description
    assert evidence.flagged == (evidence.metrics["flip_rate"] >= 0.5)
    assert result.metrics["mean_activation_score"] >= 0.8


@has_digits_prior
def test_same_seed_same_result_and_fidelity_figures(digits_twins):
    options = {"fast": "true"}
    first = create("diffusion").run(digits_twins.clean, RunContext(seed=3, options=options))
    second = create("diffusion").run(digits_twins.clean, RunContext(seed=3, options=options))
    assert first.status == "ok", first.reason
    assert [c.score for c in first.classes] == [c.score for c in second.classes]
    assert [c.metrics for c in first.classes] == [c.metrics for c in second.classes]
    assert first.fidelity["spearman"] == second.fidelity["spearman"]
    assert "Randomisation check" in first.description
