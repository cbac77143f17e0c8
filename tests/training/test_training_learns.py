"""Training learns: the tiny PSPNet and PSANet, trained with the project's own step (the recipe's
optimizer groups, poly schedule, main + aux loss from `build_criterion`), lower their loss on a
fixed batch and segment that batch far better than chance.

Nothing else in the suite would notice a training loop that ascends the loss or ignores the wrong
label: the other training tests run a couple of iterations and check files, not learning. Seconds
per model on one thread (crop 33, four rendered scenes, 36 iterations).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.config import config_path, load_config
from training.data.synthetic import class_styles, render_scene
from training.data.transforms import val_transform
from training.metrics import intersection_and_union, summarize
from training.models import build_model
from training.optim import build_optimizer
from training.train import build_criterion, evaluate, train_one_epoch

CROP = 33
SCENES = 4
ITERATIONS = 36
CLASSES = 6
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fixed_batch(cfg, ignore_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four rendered scenes through the validation transform, with a band of `ignore_label`
    pixels down the left side (their content stays: the loss must not learn from it)."""
    styles = class_styles(CLASSES)
    transform = val_transform(cfg)
    pairs = [transform(*render_scene(styles, CROP, CROP, np.random.default_rng([1, i]))) for i in range(SCENES)]
    images = torch.stack([image for image, _ in pairs])
    labels = torch.stack([label for _, label in pairs])
    labels[:, :, :4] = ignore_label
    return images, labels


def chance(labels: torch.Tensor, ignore_label: int) -> tuple[float, float]:
    """(mIoU, pixel accuracy) of predicting the most frequent class everywhere."""
    counts = np.bincount(labels[labels != ignore_label].numpy().ravel(), minlength=CLASSES)
    majority = counts.max() / counts.sum()
    return float(majority / np.count_nonzero(counts)), float(majority)


@pytest.mark.parametrize(("config", "ignore_label"), [
    ("synthetic/synthetic_pspnet18", 255),
    ("synthetic/synthetic_psanet18", 254),  # and an ignore label other than 255
])
def test_the_loss_falls_on_a_fixed_batch_and_the_batch_is_learned(config, ignore_label):
    cfg = load_config(str(config_path(config)), ["train_h", str(CROP), "train_w", str(CROP),
                                                 "ignore_label", str(ignore_label), "epochs", str(ITERATIONS)])
    torch.manual_seed(0)
    images, labels = fixed_batch(cfg, ignore_label)
    model = build_model(cfg, aux=True)
    optimizer = build_optimizer(model, cfg.base_lr, cfg.momentum, cfg.weight_decay)
    criterion = build_criterion(cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for iteration in range(ITERATIONS):  # one "epoch" per step: each returns the loss of that step
        step = train_one_epoch(model, criterion, optimizer, [(images, labels)], iteration, cfg, device=CPU,
                               max_iter=ITERATIONS, scaler=scaler, autocast_dtype=None, channels_last=False)
        losses.append(step["main_loss"])
    assert losses[0] == pytest.approx(np.log(CLASSES), rel=0.3)  # an untrained net: about uniform
    assert np.mean(losses[-5:]) < 0.35 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[10:15]), losses  # still falling after the first drop

    # The batch it saw, scored as training validation scores (eval mode, running BN statistics).
    scores = evaluate(model, [(images, labels)], CLASSES, ignore_label, CPU)
    chance_miou, chance_accuracy = chance(labels, ignore_label)
    assert scores["mIoU"] >= chance_miou + 0.2, (scores, chance_miou)
    assert scores["aAcc"] >= chance_accuracy + 0.1, (scores, chance_accuracy)
    with torch.no_grad():
        prediction = model.eval()(images).argmax(1).numpy()
    per_class = summarize(*intersection_and_union(prediction, labels.numpy(), CLASSES, ignore_label))["per_class"]
    assert per_class[0]["iou"] >= 0.5, per_class  # background (class 0) is a class, not ignored


def test_the_criterion_leaves_out_exactly_the_ignore_label():
    logits = torch.randn(2, CLASSES, 5, 7)
    target = torch.randint(0, CLASSES, (2, 5, 7))
    for ignore_label in (255, 254, 0):
        criterion = build_criterion(SimpleNamespace(ignore_label=ignore_label))
        marked = target.clone()
        marked[:, :2] = ignore_label
        kept = marked != ignore_label
        expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[kept], marked[kept])
        assert criterion(logits, marked).item() == pytest.approx(expected.item(), rel=1e-6)
        # What the network says under ignored pixels changes neither the loss nor its gradient there.
        changed = logits.clone().requires_grad_(True)
        with torch.no_grad():
            changed[:, :, :2] += 10 * torch.randn_like(changed[:, :, :2])
        loss = criterion(changed, marked)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        loss.backward()
        assert torch.count_nonzero(changed.grad[:, :, :2]) == 0
