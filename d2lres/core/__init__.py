"""The contract: the API stubs, the framework-free spec, input checks, presets, the neutral
weights file and the trainer skeleton the backends share."""
