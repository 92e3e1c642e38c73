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
    # colour input: the frame scan runs by default
    assert result.metrics["frame_scan"] == 1.0 and "one-colour frames per class" in result.description
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
    # The transplant of the spurious class's frame flips more other-class inputs than any other class's,
    # past the prior's calibrated threshold, and nothing else is flagged.
    flips = [c.metrics["flip_rate"] for c in result.classes]
    assert max(range(len(flips)), key=flips.__getitem__) == spurious_class, flips
    assert tuple(result.flagged_classes) == (spurious_class,), flips
    evidence = result.classes[spurious_class]
    assert any("context images" in picture.caption for picture in evidence.images)
    assert evidence.metrics["flip_rate_frame"] >= evidence.metrics["flip_rate_background_texture"]
    assert "frame" in evidence.description
    assert evidence.flagged == (evidence.metrics["flip_rate"] >= evidence.metrics["flip_threshold"])
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


class _BrightBorder(torch.nn.Module):
    """Class 1 when the outer 2-px ring is bright: a feature of the image border, nothing else."""

    def forward(self, x):
        ring = torch.ones(x.shape[-2:], dtype=torch.bool)
        ring[2:-2, 2:-2] = False
        border = x[..., ring].mean((1, 2))
        return torch.stack([torch.full_like(border, 0.5), border], 1)


class _BrightPixels(torch.nn.Module):
    """Class 1 when enough pixels are bright, wherever they are: an 'object' that a frame also draws."""

    def forward(self, x):
        amount = x.sum((1, 2, 3)) / 50
        return torch.stack([torch.ones_like(amount), amount], 1)


def test_frame_control_tells_a_border_feature_from_an_object_drawn_by_a_ring():
    from auditor.diffusion.readout import intervene, ring_mask

    framed = torch.where(ring_mask(28, 28, 2), 1.0, 0.0).expand(2, 4, 1, 28, 28).clone()  # (K=2, N=4)
    framed[0] = 0.0                                                                        # class 0: nothing
    others = torch.zeros(32, 1, 28, 28)
    labels = torch.zeros(32, dtype=torch.long)
    border = intervene(_BrightBorder(), framed, others, labels, 2, torch.Generator().manual_seed(0))
    assert border.flip["frame"][1] == 1.0 and border.frame_control[1] == 0.0
    anywhere = intervene(_BrightPixels(), framed, others, labels, 2, torch.Generator().manual_seed(0))
    assert anywhere.flip["frame"][1] == 1.0 and anywhere.frame_control[1] == 1.0


class _Stripes(torch.nn.Module):
    """Class 1 when the image correlates with diagonal stripes of period 4 at their phase: a learned
    pattern, nothing else. With ``any_phase`` the stripes count at either phase: a class that takes any
    periodic detail of that kind."""

    def __init__(self, any_phase: bool = False):
        super().__init__()
        self.any_phase = any_phase

    def forward(self, x):
        from auditor.synthetic.spurious import TextureFeature

        pattern = TextureFeature(period=4).stripes(*x.shape[-2:]).to(x)
        score = (x * pattern).mean((1, 2, 3)) * 20
        score = score.abs() if self.any_phase else score
        return torch.stack([torch.full_like(score, 0.5), score], 1)


class _FineDetail(torch.nn.Module):
    """Class 1 when there is enough fine detail, of any kind: energy, not a texture."""

    def forward(self, x):
        from auditor.diffusion.readout import high_pass

        score = high_pass(x).pow(2).mean((1, 2, 3)) * 200
        return torch.stack([torch.full_like(score, 0.5), score], 1)


def test_texture_controls_tell_a_learned_pattern_from_a_class_that_takes_any_detail():
    from auditor.diffusion.readout import intervene
    from auditor.synthetic.spurious import TextureFeature

    striped = (0.5 + 0.3 * TextureFeature(period=4).stripes(28, 28)).expand(2, 4, 1, 28, 28).clone()  # (K=2, N=4)
    striped[0] = 0.5                                                                                  # class 0: flat
    others = torch.full((32, 1, 28, 28), 0.5)
    labels = torch.zeros(32, dtype=torch.long)
    texture = intervene(_Stripes(), striped, others, labels, 2, torch.Generator().manual_seed(0))
    assert texture.flip["background texture"][1] == 1.0
    assert texture.texture_control[1] == 0.0 and texture.texture_shift_control[1] == 0.0
    detail = intervene(_FineDetail(), striped, others, labels, 2, torch.Generator().manual_seed(0))
    assert detail.flip["background texture"][1] == 1.0 and detail.texture_control[1] == 1.0
    periodic = intervene(_Stripes(any_phase=True), striped, others, labels, 2, torch.Generator().manual_seed(0))
    assert periodic.flip["background texture"][1] == 1.0
    assert periodic.texture_control[1] == 0.0 and periodic.texture_shift_control[1] == 1.0


def test_inward_frame_keeps_the_ring_width_around_the_central_box():
    from auditor.diffusion.readout import FRAME_CONTROL, ring_mask, transplant

    source = torch.where(ring_mask(28, 28, 2), 1.0, 0.0)[None, None]
    for name, inset in ((FRAME_CONTROL, 4), (FRAME_CONTROL + " further", 8)):     # 15 % and 30 % of 28 px
        moved = transplant(name, source, torch.zeros_like(source), 2)[0, 0]
        outside = torch.ones(28, 28, dtype=torch.bool)
        outside[inset:-inset, inset:-inset] = False
        assert float(moved[outside].sum()) == 0.0
        assert torch.equal(moved[inset:-inset, inset:-inset].bool(), ring_mask(28 - 2 * inset, 28 - 2 * inset, 2))


def test_context_variations_teach_the_prior_frames_and_textures_it_never_saw_on_clean_images():
    from auditor.diffusion.prior import add_context

    x = torch.full((400, 3, 32, 32), 0.5)
    out = add_context(x, torch.Generator().manual_seed(0), 0.5)
    changed = (out != x).flatten(1).any(1)
    assert 0.4 < float(changed.float().mean()) < 0.6
    centre_kept = (out[..., 4:-4, 4:-4] == 0.5).flatten(1).all(1)
    framed, textured = changed & centre_kept, changed & ~centre_kept
    assert int(framed.sum()) > 60 and int(textured.sum()) > 60
    # a frame: the outer pixel ring is one colour; its width varies
    assert all(len(torch.unique(img[:, 0, :].T, dim=0)) == 1 for img in out[framed])
    widths = {int((img[0, 16, :16] != 0.5).sum()) for img in out[framed]}
    assert len(widths) >= 3
    # textures are stripes or checks of several periods and contrasts, over the whole image
    contrasts = {round(float(img.max() - img.min()), 2) for img in out[textured]}
    assert len(contrasts) > 10
    assert torch.equal(add_context(x, torch.Generator().manual_seed(0), 0.0), x)


def test_texture_transplant_keeps_background_stripes_in_phase_and_drops_outlines():
    from auditor.diffusion.readout import high_pass, periodic_texture
    from auditor.synthetic.spurious import TextureFeature

    stripes = 0.3 * TextureFeature(period=4).stripes(32, 32)[None, None]
    source = 0.5 + stripes.clone()
    source[..., 10:22, 10:22] = 0.9                                    # an object over the stripes
    texture = periodic_texture(source)
    # the stripes come back over the whole image, object included, in phase with the source's
    corr = float((texture * stripes).sum() / (texture.norm() * stripes.norm()))
    assert corr > 0.9
    assert float(texture.pow(2).mean()) == pytest.approx(float(stripes.pow(2).mean()), rel=0.3)
    # a stroke or a blob in the background has no periodic part worth the name: no strong grating survives
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for blob in ((xx == 4) & (yy >= 4) & (yy < 28), (yy - 6) ** 2 + (xx - 6) ** 2 < 16):
        source = torch.where(blob, 1.0, 0.5)[None, None]
        assert float(periodic_texture(source).abs().max()) < 0.25 * float(high_pass(source).abs().max())


def test_every_grating_of_the_bank_survives_the_texture_transplant():
    from auditor.diffusion.readout import grating_bank, periodic_texture

    bank = grating_bank(3, 28, 28, 0.25)
    wave = bank - 0.5
    texture = periodic_texture(bank)
    corr = (texture * wave).sum((1, 2, 3)) / (texture.flatten(1).norm(dim=1) * wave.flatten(1).norm(dim=1))
    assert float(corr.min()) > 0.9
    assert float(wave.pow(2).mean((1, 2, 3)).sqrt().min()) > 0.5 * 0.25   # none sampled at its zeros


def test_grating_scan_finds_the_grating_a_model_takes_at_its_phase():
    from auditor.diffusion.readout import grating_bank, scan_gratings

    bank = grating_bank(1, 16, 16, 0.25)
    wanted = bank[101, 0] - 0.5

    class TakesOneGrating(torch.nn.Module):                         # class 1 only for that grating, at that phase
        def forward(self, x):
            score = ((x[:, 0] - x[:, 0].mean((-2, -1), keepdim=True)) * wanted).sum((-2, -1))
            return torch.stack([torch.full_like(score, 6.0), score], 1)

    victims = 0.5 + 0.05 * torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    best = scan_gratings(TakesOneGrating(), victims, k=2, amplitude=0.25, per_class=2)
    assert best.shape == (2, 2, 1, 16, 16)
    assert torch.equal(best[1, 0], bank[101])


class _TakesOneFrame(torch.nn.Module):
    """Class 2 only for a frame of one colour and width: every pixel of the ``width``-px border near the
    colour, and the pixels just inside it far from it (a narrower frame of that colour does not count)."""

    def __init__(self, colour: torch.Tensor, width: int, side: int = 16):
        super().__init__()
        from auditor.diffusion.readout import ring_mask

        self.colour = colour
        self.border = ring_mask(side, side, width)
        self.inside = ring_mask(side, side, width + 1) & ~self.border

    def forward(self, x):
        miss = (x[:, :, self.border] - self.colour[None, :, None]).abs().mean((1, 2))
        inside = (x[:, :, self.inside] - self.colour[None, :, None]).abs().mean((1, 2))
        score = 8.0 - 300.0 * miss - 300.0 * (0.2 - inside).clamp(min=0)       # a neighbour of the grid loses
        return torch.stack([torch.full_like(score, 4.0), torch.full_like(score, 3.0), score], 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_frame_scan_finds_the_frame_colour_and_width_a_model_takes(channels):
    from auditor.diffusion.readout import frame_colour_bank, frame_widths, scan_frames, transplant

    colour = torch.tensor([0.375, 0.75, 0.125][:channels])
    model = _TakesOneFrame(colour, width=3)
    victims = torch.rand(8, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    best, widths = scan_frames(model, victims, k=3, per_class=2)
    assert best.shape == (3, 2, channels, 16, 16) and widths.shape == (3, 2)
    assert len(frame_colour_bank(channels)) == (33 if channels == 1 else 729)
    assert frame_widths(16, 16) == (1, 2) and frame_widths(32, 32) == (1, 2, 3, 4)
    # 16 px scans 1–2 px wide frames, none of which the model takes; at 32 px the 3-px frame is found
    assert model(transplant("frame", best[2, :1], victims[:1], ring=widths[2, :1])).argmax(1).item() != 2
    model = _TakesOneFrame(colour, width=3, side=32)
    victims = torch.rand(8, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    best, widths = scan_frames(model, victims, k=3, per_class=2)
    assert int(widths[2, 0]) == 3
    stamped = transplant("frame", best[2, :1], victims[:1], ring=widths[2, :1])
    assert torch.allclose(stamped[0][:, model.border], colour[:, None].expand(-1, int(model.border.sum())))
    assert model(stamped).argmax(1).item() == 2
    assert model(transplant("frame", best[2, :1], victims[:1], ring=2)).argmax(1).item() != 2


def test_frame_scan_option_is_auto_true_or_false():
    from auditor.detectors.diffusion import frame_scan_wanted
    from auditor.errors import OptionError

    assert frame_scan_wanted("auto", 3) and not frame_scan_wanted("auto", 1)
    assert frame_scan_wanted("True", 1) and not frame_scan_wanted("off", 3)
    with pytest.raises(OptionError, match="auto, true or false"):
        frame_scan_wanted("sometimes", 3)


def test_intervention_measures_each_frame_source_at_its_own_width():
    from auditor.diffusion.readout import intervene

    colour = torch.tensor([0.375])
    model = _TakesOneFrame(colour, width=3, side=32)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 1, 32, 32, generator=g)
    others, labels = torch.rand(40, 1, 32, 32, generator=g), torch.randint(0, 2, (40,), generator=g)
    frames = torch.rand(3, 2, 1, 32, 32, generator=g)
    frames[2] = colour.view(1, 1, 1, 1)                                # class 2: both sources of the right colour
    narrow = intervene(model, images, others, labels, ring=2, generator=torch.Generator().manual_seed(1),
                       sources={"frame": frames})
    widths = torch.full((3, 2), 2, dtype=torch.long)
    widths[2, 1] = 3
    own = intervene(model, images, others, labels, ring=2, generator=torch.Generator().manual_seed(1),
                    sources={"frame": frames}, widths=widths)
    assert narrow.flip["frame"][2] == 0.0
    assert own.flip["frame"][2] == 1.0 and own.source["frame"][2] == 1 and own.frame_width[2] == 3
    assert own.frame_control[2] == 0.0                                 # moved inward at its width, it is no frame


@has_digits_prior
def test_skips_when_the_shape_matched_prior_does_not_fit_the_model():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.arange(10.0))                    # every input is class 9
    target = ModelTarget.from_module(net, DIGITS)
    result = create("diffusion").run(target, RunContext(seed=0, options={"fast": "true"}))
    assert result.status == "skipped"
    assert "does not fit" in result.reason and "auditor prior train" in result.reason


@has_digits_prior
def test_thresholds_come_from_the_prior_calibration_unless_the_user_sets_one(digits_twins):
    calibrated = dict(select_prior((1, 28, 28)).thresholds)
    assert set(calibrated) == {"frame", "background texture", "frame (frame scan)"}, \
        "the bundled digits prior lost its calibration"
    options = {"fast": "true", "fidelity_stages": "0"}
    default = create("diffusion").run(digits_twins.clean, RunContext(seed=0, options=options))
    assert default.status == "ok", default.reason
    assert default.metrics["frame_scan"] == 0.0, "the frame scan is off by default for greyscale inputs"
    assert all(c.metrics["flip_threshold"] in calibrated.values() for c in default.classes)
    assert "calibrated on clean reference models" in default.description
    scan = create("diffusion").run(digits_twins.clean, RunContext(seed=0, options={**options, "frame_scan": "true"}))
    assert {c.metrics["flip_threshold"] for c in scan.classes} <= {calibrated["frame (frame scan)"],
                                                                    calibrated["background texture"]}
    user = create("diffusion").run(digits_twins.clean, RunContext(seed=0, options=options, threshold=0.05))
    assert all(c.metrics["flip_threshold"] == 0.05 for c in user.classes)
    assert all(c.flagged == (c.metrics["flip_rate"] >= 0.05) for c in user.classes)


def test_class_objectives_reward_the_class_and_only_cross_entropy_saturates():
    from auditor.detectors.diffusion import class_loss

    labels = torch.tensor([0, 0])
    logits = torch.tensor([[20.0, 0.0, 1.0], [40.0, 0.0, 1.0]])        # the class already wins, by more below
    ce, logit, margin = (class_loss(logits, labels, o) for o in ("cross_entropy", "logit", "margin"))
    assert float(ce[1]) <= float(ce[0]) < 1e-8                         # nothing left to gain
    assert float(logit[1] - logit[0]) == -20.0 and float(margin[1] - margin[0]) == -20.0
    assert margin.tolist() == [-19.0, -39.0]


class _ObjectAndStripes(torch.nn.Module):
    """Class 0 from the brightness of an object box (rows and columns 8–19); class 1 from diagonal
    stripes of period 4 at their phase, seen over the whole image or only on the object."""

    def __init__(self, stripes_on_object_only: bool):
        super().__init__()
        self.on_object = stripes_on_object_only

    def forward(self, x):
        from auditor.synthetic.spurious import TextureFeature

        obj = x[..., 8:20, 8:20].mean((1, 2, 3))
        weight = TextureFeature(period=4).stripes(*x.shape[-2:]).to(x)
        if self.on_object:
            inside = torch.zeros_like(weight)
            inside[8:20, 8:20] = 1.0
            weight = weight * inside / inside.mean()
        stripes = ((x - 0.5) * weight).mean((1, 2, 3))
        return torch.stack([10 * (obj - 0.5), 40 * stripes], 1)


def test_object_mask_marks_what_the_decision_rests_on():
    from auditor.diffusion.readout import object_mask

    x = torch.full((3, 1, 32, 32), 0.5)
    x[..., 8:20, 8:20] = 0.9
    mask = object_mask(_ObjectAndStripes(stripes_on_object_only=False), x)
    assert mask[:, :, 8:20, 8:20].all()                               # the object box, dilated a little
    assert not mask[:, :, :5].any() and not mask[:, :, 23:].any()      # nothing far from it
    blind = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    torch.nn.init.zeros_(blind[1].weight)                              # a decision that rests on no pixel
    assert not object_mask(blind, x).any()


def test_texture_checks_turn_the_texture_halve_it_and_keep_it_off_the_object():
    from auditor.diffusion.readout import TEXTURE_CHECKS, intervene
    from auditor.synthetic.spurious import TextureFeature

    striped = (0.5 + 0.3 * TextureFeature(period=4).stripes(32, 32)).expand(2, 4, 1, 32, 32).clone()
    striped[0] = 0.5
    others = torch.full((32, 1, 32, 32), 0.5)
    others[..., 8:20, 8:20] = 0.9                                       # every input shows the object
    labels = torch.zeros(32, dtype=torch.long)

    def run(model, checks=True):
        return intervene(model, striped, others, labels, 2, torch.Generator().manual_seed(0), texture_checks=checks)

    background = run(_ObjectAndStripes(stripes_on_object_only=False))
    on_object = run(_ObjectAndStripes(stripes_on_object_only=True))
    turned, half, off = TEXTURE_CHECKS
    for found in (background, on_object):
        assert found.flip["background texture"][1] == 1.0
        assert found.texture_checks[turned][1] == 0.0                  # diagonal stripes turned: the other diagonal
    assert background.texture_checks[half][1] == 1.0                  # strong enough at half contrast
    assert background.texture_checks[off][1] == 1.0                   # works around the object
    assert on_object.texture_checks[off][1] == 0.0                    # works only on it
    assert run(_ObjectAndStripes(stripes_on_object_only=False), checks=False).texture_checks == {}
