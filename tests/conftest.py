"""Shared test set-up."""

import torch

# The tests use tiny models: one thread avoids thread hand-off costs that dominate such small ops on a
# 2-core machine (measured: a tiny UNet forward 0.12 s with one thread, up to 1.9 s with two under load).
torch.set_num_threads(1)
