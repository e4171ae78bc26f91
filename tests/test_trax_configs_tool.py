"""The pure gin rewriting of tools/trax_configs.py (no Trax snapshot, no training)."""

from __future__ import annotations

from tests import scripts

trax_configs = scripts.load("tools/trax_configs.py")

LM1B = """
import trax.data
import trax.models

batcher.data_streams = @data.data_streams
batcher.batch_size_per_device = 128
data_streams.dataset_name = 't2t_languagemodel_lm1b32k'  # a t2t problem
data_streams.preprocess_fn = @data.lm1b_preprocess
lm1b_preprocess.max_target_length = 512
TransformerLM.d_model = 512
TransformerLM.vocab_size = 32000
TransformerLM.ff_activation = @trax.layers.Relu
train.model = @trax.models.TransformerLM
train.checkpoints_at = \\
    [1000, 5000]
"""


def test_statements_join_continued_lines_and_drop_comments():
    stmts = [s for _, _, s in trax_configs.statements(LM1B)]
    assert "train.checkpoints_at = [1000, 5000]" in stmts
    assert "data_streams.dataset_name = 't2t_languagemodel_lm1b32k'" in stmts


def test_rename_trax_is_mechanical():
    text = "import trax.models\ntrain.model = @trax.models.MLP\nx = @my_trax.f\n"
    assert (
        trax_configs.rename_trax(text)
        == "import trax_sl.models\ntrain.model = @trax_sl.models.MLP\nx = @my_trax.f\n"
    )


def test_data_bindings_are_commented_out_and_replaced_offline():
    text, extra, note, _ = trax_configs.rewrite(LM1B)
    lines = text.split("\n")
    assert "# [offline] batcher.data_streams = @data.data_streams" in lines
    assert "# [offline] lm1b_preprocess.max_target_length = 512" in lines
    assert "TransformerLM.d_model = 512" in lines
    assert "TransformerLM.ff_activation = @trax_sl.layers.Relu" in lines
    assert "train.inputs = @trax_sl.data.sequence_copy_inputs" in extra
    assert "sequence_copy_inputs.vocab_size = 32000" in extra
    assert "sequence_copy_inputs.pad_to_multiple = 64" in extra  # 512 capped at 64.
    assert "sequence_copy_inputs.batch_size = 2" in extra
    assert "512->64" in note


def test_images_get_random_inputs_of_their_shape():
    gin_text = (
        "batcher.data_streams = @data.data_streams\n"
        "data_streams.dataset_name = 'cifar10'\n"
        "train.model = @trax.models.WideResnet\n"
    )
    _, extra, _, _ = trax_configs.rewrite(gin_text)
    assert "random_inputs.input_shape = (2, 32, 32, 3)" in extra
    assert "random_inputs.output_range = (0, 9)" in extra


def test_offline_generators_are_kept_and_lengths_follow_chunks():
    gin_text = (
        "n = 13\n"
        "data_streams.dataset_name = 'copy'\n"
        "sequence_copy_inputs.vocab_size = %n\n"
        "train.inputs = @trax.data.sequence_copy_inputs\n"
        "train.model = @trax.models.ReformerLM\n"
    )
    text, extra, _, _ = trax_configs.rewrite(gin_text)
    assert "# [offline] data_streams.dataset_name = 'copy'" in text
    assert extra == [
        "train.inputs = @trax_sl.data.sequence_copy_inputs",
        "sequence_copy_inputs.batch_size = 2",
    ]
    bound = trax_configs.bindings("LSHSelfAttention.chunk_len = 256\nHourglassLM.hierarchy = '2@3 4@2'\n")
    assert trax_configs.length_multiple(bound) == 768


def test_inline_includes_and_macros():
    files = {"a.gin": "include 'b.gin'\nx = %y\n", "b.gin": "y = 7\n"}
    text = trax_configs.inline_includes("a.gin", files.__getitem__)
    bound = trax_configs.bindings(text)
    assert trax_configs.resolve(bound["x"], bound) == 7


def test_classify():
    assert trax_configs.classify(0, "", 3, 600, 1) == "ran 3 steps"
    assert trax_configs.classify(None, "", 1, 600, 600).startswith("too big for this CPU")
    assert trax_configs.classify(1, "ModuleNotFoundError: No module named 't5'", 0, 600, 1) == "needs t5"
    log = "Traceback ...\nValueError: no such layer\n"
    assert trax_configs.classify(1, log, 0, 600, 1) == "fails: ValueError: no such layer"


def test_shrink_keeps_per_layer_lists_whole():
    bound = trax_configs.bindings("attn = [@A, @B, @A, @B]\nReformerLM.attention_type = %attn\n")
    shrunk = trax_configs.shrink_bindings("ReformerLM", bound, {"n_layers", "d_model", "attention_type"})
    assert shrunk == ["ReformerLM.d_model = 16", "ReformerLM.n_layers = 4"]


def test_shrink_keeps_d_ff_a_multiple_of_the_sparse_feed_forward_block():
    bound = trax_configs.bindings("ff_sparsity = 64\nConfigurableTerraformer.ff_sparsity = %ff_sparsity\n")
    shrunk = trax_configs.shrink_bindings("ConfigurableTerraformer", bound, {"d_ff", "ff_sparsity"})
    assert shrunk == ["ConfigurableTerraformer.d_ff = 64"]
    bound = trax_configs.bindings("Transformer2.ff_sparsity = (4, 2, 0.1, 0.3)\n")
    assert trax_configs.shrink_bindings("Transformer2", bound, {"d_ff"}) == ["Transformer2.d_ff = 32"]
