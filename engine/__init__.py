"""The library that fine-tunes. It imports neither jobs/ nor app/ and works alone from Python.

    engine.config       the config contract: TrainConfig, its help text, validate()
    engine.settings     the environment settings the engine reads (FTSTUDIO_HOME, trackers')
    engine.data         files -> records -> tokens -> batches, and the data report
    engine.models       loading, the catalog, the demo model, GGUF import, recipes, the estimate
    engine.training     the loop, losses, optimizer, precision, checkpoints, trackers
    engine.evaluation   generation, metrics, base-vs-tuned evaluation
    engine.export       adapter, merged, bitsandbytes and GGUF exports, each verified
"""
