"""Tiny random-weight models built locally (no hub): a BPE tokenizer and HF checkpoints."""

from __future__ import annotations

import os

import torch

TEXT = """Alice and Bob solve problems together. Each worker writes a step, then checks the
others. The answer is a number: first add, then multiply. We plan the work, split it, and
tell each other what we found. If two workers do the same thing, one of them stops.
Let x be the unknown. Then 2x + 3 = 11, so x = 4. Check: 2 * 4 + 3 = 11. Done.
"""


def make_tokenizer(path: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>")
    fast.save_pretrained(path)
    return fast


FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    # Partial rotary + GPT-J style is not in these families; Llama-3 scaling is.
    "llama3-scaled": ("LlamaConfig", "LlamaForCausalLM", {
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}),
}
# Llamas of the head sizes real models use (64: SmolLM2, 80: Phi-2-like, 96, 128: Llama-3),
# for the walk over engine settings (vLLM picks its CPU cache layout by head size).
FAMILIES.update({f"llama-h{d}": ("LlamaConfig", "LlamaForCausalLM", {"head_dim": d}) for d in (64, 80, 96, 128)})


def make_model(family: str, root: str) -> str:
    """A 2-layer random model of ``family`` saved under ``root``; returns its folder."""
    import transformers

    path = os.path.join(root, family)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    config_name, model_name, extra = FAMILIES[family]
    tokenizer = make_tokenizer(path)
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                  tie_word_embeddings=False, dtype="float32")
    kwargs.update(extra)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():  # larger logits than the default init: greedy ties become unlikely
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path)
    return path
