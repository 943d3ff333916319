"""Hugging Face interop, one module per `transformers` family (gpt2, gpt_neox, llama, ...).

Every family module has the same interface (MODEL_TYPE, ARCHITECTURE, unsupported, config_to_hf,
config_from_hf, state_to_hf, state_from_hf); `families` lists them and does the shared reading and
writing. Family modules are imported only when used, so one that is missing breaks only itself.
"""
