"""Fine-tuning with Lightning: CSM-1B LoRA (voice), Whisper (exported to CTranslate2 for faster-whisper), LLM LoRA.

``python train.py task=<csm_lora|whisper|llm_lora> data=<preset> [trainer=<preset>] [key=value ...]``. Modules:
``data`` (dataset presets and row readers), ``csm`` / ``whisper`` / ``llm`` (one task each: schema, data preparation,
model, loss, export), ``loop`` (the run: config, MLflow, Lightning Trainer, summary.json), ``module`` (the
LightningModule every task runs in). Module-level imports stay light (Hydra imports the schemas before parsing).
"""
