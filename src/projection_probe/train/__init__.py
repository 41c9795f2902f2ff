"""Training: the demo's stage-1 projector alignment (`align`), fine-tuning in the ft-proj, ft-e2e and
ft-lora settings with the transformers Trainer (`finetune`), and export to a llava-hf checkpoint
(`export`). Training reads cached vision features, never pixels."""
