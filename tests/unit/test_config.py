import pytest

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4, num_kv_heads=2)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(RadError, match=r"unknown config key 'model.num_layer'.*did you mean 'num_layers'"):
        ModelConfig.from_dict({**BASE, "num_layer": 3})


def test_layout_length_must_equal_layers():
    with pytest.raises(RadError, match=r"model.layout has 2 entries but model.num_layers=3"):
        ModelConfig(**BASE, layout=["attention", "mamba"])


def test_layout_entry_must_be_a_kind():
    with pytest.raises(RadError, match=r"model.layout\[1\]='mamab'.*did you mean 'mamba'"):
        ModelConfig(**BASE, layout=["attention", "mamab", "attention"])


def test_tp_must_divide_heads_and_groups():
    cfg = ModelConfig(**BASE)
    with pytest.raises(RadError, match=r"parallel.tp=3 does not divide model.num_attention_heads=4"):
        cfg.check_parallel(3)
    odd = ModelConfig(**{**BASE, "num_attention_heads": 8, "num_kv_heads": 8, "hidden_size": 64})
    odd.num_kv_heads = 6  # 8 % 6 != 0 after construction: check_parallel must still catch kv/TP mismatches
    with pytest.raises(RadError, match=r"num_kv_heads=6"):
        odd.check_parallel(4)
    cfg.check_parallel(2)  # divides: no error


def test_mamba_tp_divisibility_names_the_field():
    cfg = ModelConfig(**{**BASE, "num_attention_heads": 6, "num_kv_heads": 2, "hidden_size": 48},
                      layout=["attention", "mamba", "attention"], mamba={"num_heads": 3, "num_groups": 3})
    with pytest.raises(RadError, match=r"parallel.tp=2 does not divide"):
        cfg.check_parallel(2)


def test_from_hf_reads_llama3_scaling_and_tying():
    hf = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True,
          "rope_parameters": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_theta": 500000.0}}
    cfg = ModelConfig.from_hf(hf)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling.factor == 32.0 and cfg.tie_word_embeddings
    with pytest.raises(RadError, match="not a Llama-family"):
        ModelConfig.from_hf({**hf, "model_type": "gpt2"})


def test_mil_defaults_follow_attention_shape():
    m = ModelConfig(**BASE).mamba_shape()
    assert (m.num_heads, m.head_dim, m.state_dim, m.num_groups, m.d_xb) == (4, 16, 16, 4, 32)
