"""Models: finding, loading and sizing a base model. Import from the modules.

    engine.models.load          the base model and the fine-tuning method put on it, the tokenizer
    engine.models.attention     varlen attention for packed rows, and auto's choice of kernel
    engine.models.catalog       the models the studio offers: presets, local folders, the demo
    engine.models.presets       model shapes known offline, and read_config() for any name
    engine.models.demo          the small offline demo model (`ftstudio demo-model`)
    engine.models.gguf_import   a GGUF file as a safetensors model folder (`ftstudio models import`)
    engine.models.recipes       defaults that fit the model (lr, epochs, max_seq_len) with reasons
    engine.models.estimate      parameters and peak training memory (estimate, estimate_for)
    engine.models.prune         structured pruning: drop the layers that change least, or narrow MLPs

Use from Python:
    from engine.models.load import load_model
    from engine.models.estimate import estimate_for
    est = estimate_for(cfg)                     # None when the model's shape is unknown
"""
