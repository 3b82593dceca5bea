"""Training on Lightning: `runner.train` / `runner.evaluate` run a recipe's stages with checkpoints, resume,
logging and any device layout Lightning supports (CPU, one GPU, DDP, FSDP; torchrun and SLURM launches).

Modules: `config` (typed run config, stages), `optim` (AdamW groups, schedules), `data` (rank-sharded,
resumable loaders, FiT mixing), `distributed` (process group from the launcher), `recipe` (what a system
supplies), `module` (the LightningModule), `runner` (run folders, Trainer, train / evaluate).
"""
