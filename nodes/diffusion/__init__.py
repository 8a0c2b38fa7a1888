"""Model code: a plain PyTorch library (UNet, VAE, text encoders, tokenizer, schedules, samplers). Never imports engine."""
