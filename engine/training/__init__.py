"""Training: the loop and everything that takes part in a step. Import from the modules.

    engine.training.loop         run(config, reporter): setup -> fit -> finish; `ftstudio train`
    engine.training.loss         the causal-LM loss through the lm_head in chunks (TokenLoss)
    engine.training.preference   DPO, IPO, hinge, SimPO, ORPO and KTO losses from log-probs
    engine.training.reference    DPO's reference log-probs computed once and cached
    engine.training.grpo         GRPO: sampling, group advantages, the clipped policy loss, its steps
    engine.training.rewards      GRPO's reward functions: built-ins, admin-installed, called safely
    engine.training.distill      knowledge distillation: forward KL, GKD, the teacher's cached top-k
    engine.training.optim        the optimizer over the trainable parameters, NEFTune noise
    engine.training.precision    weight dtype, compute dtype, accelerate's mixed precision
    engine.training.speedups     Liger kernels and torch.compile (train.kernels, train.compile)
    engine.training.checkpoint   resumable checkpoints, metrics.jsonl and run.json
    engine.training.parallel     DDP or FSDP2 sharding (parallel.*), sharded checkpoints, launch
    engine.training.trackers     TensorBoard, MLflow and W&B (train.report_to)
    engine.training.redact       which environment values are secrets, and masking them
    engine.training.reporter     the callback interface a run reports through (Reporter)

Use from Python:
    from engine.training.loop import run
    from engine.training.reporter import PrintReporter
    result = run(load_config("run.yaml"), PrintReporter())
"""
