"""Training: optimizer and schedule, losses, on-device mixup/cutmix (DESIGN.md 4)."""
