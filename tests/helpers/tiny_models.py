"""Tiny random-weight models built locally (no hub): a BPE tokenizer and HF checkpoints."""

from __future__ import annotations

import os

import torch

TEXT = """Alice and Bob solve problems together. Each worker writes a step, then checks the
others. The answer is a number: first add, then multiply. We plan the work, split it, and
tell each other what we found. If two workers do the same thing, one of them stops.
Let x be the unknown. Then 2x + 3 = 11, so x = 4. Check: 2 * 4 + 3 = 11. Done.
"""


# Every tiny model is a chat model (ChatML, its markers plain text to the tiny vocabulary), as
# the real ones are: think while answering builds its views from the chat template.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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
    fast.chat_template = CHATML
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
# Families with sliding windows, soft caps, sinks and per-layer RoPE. Windows of 12 tokens,
# shorter than the prompt and every view, so that they cut the views; two layers, one
# windowed and one full where the family mixes them.
WINDOW = 12
MIXED = ["sliding_attention", "full_attention"]
FAMILIES.update({
    # Mistral: every layer windowed (vLLM: one block table, a window over each request).
    "mistral": ("MistralConfig", "MistralForCausalLM", {"head_dim": 32, "sliding_window": WINDOW}),
    # Gemma 2: alternating windows, soft-capped attention scores and final logits, GeGLU,
    # sandwich norms, scaled embeddings, query_pre_attn_scalar, tied embeddings (vLLM's Gemmas
# have no lm_head of their own).
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "head_dim": 32, "sliding_window": WINDOW, "layer_types": MIXED, "query_pre_attn_scalar": 32,
        "tie_word_embeddings": True, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 30.0}),
    # Gemma 3: a local RoPE base for windowed layers, a global one (linear scaling) for full
    # ones, QK-norm.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 32, "sliding_window": WINDOW, "layer_types": MIXED, "query_pre_attn_scalar": 32,
        "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}}),
    # gpt-oss: alternating windows, learned sinks, YaRN, a mixture of experts.
    "gpt-oss": ("GptOssConfig", "GptOssForCausalLM", {
        "head_dim": 32, "sliding_window": WINDOW, "layer_types": MIXED, "num_local_experts": 4,
        "num_experts_per_tok": 2, "intermediate_size": 128,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32}}),
})
# Families whose layers mix windowed and full attention (vLLM's hybrid KV cache manager off).
MIXED_WINDOWS = ("gemma2", "gemma3", "gpt-oss")

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
        if config.tie_word_embeddings:  # Gemma: not through the embeddings (the input), through the
            model.model.norm.weight.fill_(7.0)  # final norm's gain (1 + weight)
        else:
            model.lm_head.weight.mul_(8.0)
        if family in ("mistral", "gemma2", "gemma3", "gpt-oss"):
            _sharpen(model)
    model.save_pretrained(path)
    return path


def _sharpen(model) -> None:
    """Attention scores of a few units, not the default init's hundredths: then what a family
    adds to the softmax (a window, a soft cap, a sink) changes the tokens, and an op that got it
    wrong fails the oracle tests."""
    gen = torch.Generator().manual_seed(1)
    for layer in model.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "q_norm"):  # QK-norm: the norms' gains set the scale (Gemma's is 1 + weight)
            for norm in (attn.q_norm, attn.k_norm):
                norm.weight.fill_(3.0)
        else:
            attn.q_proj.weight.mul_(6.0)
            attn.k_proj.weight.mul_(6.0)
        if hasattr(attn, "sinks"):
            attn.sinks.copy_(2.0 * torch.randn(attn.sinks.shape, generator=gen))
