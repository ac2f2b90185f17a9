"""A tiny torchvision-style ConvNet built from code (no torchvision): conv/BatchNorm stem,
one residual block, global pooling and an ``fc`` head; its pretrained BatchNorm statistics
are far from those of the task's images, as after pretraining on another data set."""
from __future__ import annotations

import torch
from torch import nn

HEAD_PATTERN = r"(^|\.)fc\."
PRETRAINED_BATCHES = 100  # num_batches_tracked of the pretrained BatchNorm layers


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(images)))
        h = torch.relu(h + self.layer1(h))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def pretrained_convnet() -> TinyResNet:
    """The same "pretrained" weights and BatchNorm statistics on every call."""
    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.fill_(-2.0)
                module.running_var.fill_(4.0)
                module.num_batches_tracked.fill_(PRETRAINED_BATCHES)
    return model.eval()


def task_batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 5, 5, generator=g) + 1.0, torch.randint(0, 3, (size,), generator=g)


def train_steps(module: nn.Module, optimizer, steps: int, first_seed: int = 0, begin_step=None, penalty=None) -> None:
    """``steps`` optimizer steps on the task's batches (cross-entropy, + the method's penalty)."""
    module.train()
    for step in range(steps):
        if begin_step is not None:
            begin_step(step)
        images, labels = task_batch(first_seed + step)
        loss = nn.functional.cross_entropy(module(images), labels)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def assert_fresh_base_reproduces(diff_file, images: torch.Tensor, trained_logits: torch.Tensor) -> None:
    """A fresh pretrained ConvNet + the stored diff gives the trained model's logits bit for bit
    (task BatchNorm statistics included), and reverting leaves the base exactly as it was."""
    from diffprune.storage import apply_diff_, load_diff

    fresh = pretrained_convnet()
    pristine = {k: v.clone() for k, v in fresh.state_dict().items()}
    handle = apply_diff_(fresh, load_diff(diff_file))
    with torch.no_grad():
        assert torch.equal(fresh(images), trained_logits)
    handle.revert()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, pristine[name]), name
