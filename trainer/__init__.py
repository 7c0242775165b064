"""The nightly trainer: curation, reward model, DPO/KTO/SFT and GRPO/PPO on a LoRA adapter."""
