"""Shared test set-up: keep torch to the machine's cores and deterministic."""

import torch

torch.set_num_threads(max(1, torch.get_num_threads()))
