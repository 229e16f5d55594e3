"""`selected_layers` index Qwen3-VL's `hidden_states` as the reference's transformers 4.57 does (gem_reference §2):
0 = the embedding output (input of decoder layer 0, image features merged in), i = the raw output of decoder layer
i - 1 (before DeepStack adds visual features), the last = the final-norm output; num_layers + 1 entries."""
from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen3VLForConditionalGeneration

from gem_ros.core.policy import backbone as bb


def test_hidden_states_are_embedding_first_with_the_installed_transformers(tiny_backbone_dir):
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_backbone_dir), dtype=torch.float32).eval()
    processor = bb.load_processor(tiny_backbone_dir)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompt = bb.build_prompts(processor, [[image]], ["pick up the red cube"], torch.device("cpu"))
    layers = model.model.language_model.layers
    inputs, outputs = {}, {}

    def keep_input(module, args, kwargs):
        inputs[module] = (args[0] if args else kwargs["hidden_states"]).clone()

    def keep_output(module, args, output):
        outputs[module] = (output[0] if isinstance(output, tuple) else output).clone()

    handles = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in layers]
    handles += [layer.register_forward_hook(keep_output) for layer in layers]
    try:
        with torch.no_grad():
            out = model.model(**prompt.inputs, output_hidden_states=True, use_cache=False, return_dict=True)
    finally:
        for handle in handles:
            handle.remove()

    hidden = out.hidden_states
    assert len(hidden) == len(layers) + 1 == model.config.text_config.num_hidden_layers + 1
    torch.testing.assert_close(hidden[0], inputs[layers[0]], rtol=0, atol=0)
    text = prompt.inputs["input_ids"] != model.config.image_token_id
    embedded = model.model.language_model.embed_tokens(prompt.inputs["input_ids"])
    torch.testing.assert_close(hidden[0][text], embedded[text], rtol=0, atol=0)   # text positions: the embeddings
    assert (hidden[0][~text] - embedded[~text]).abs().max() > 0                    # image positions: ViT features
    for i in range(1, len(layers)):
        torch.testing.assert_close(hidden[i], outputs[layers[i - 1]], rtol=0, atol=0)
    # DeepStack adds visual features after layer 0 (tiny config: deepstack_visual_indexes [0]): hidden_states[1]
    # is the layer's raw output, not what layer 1 receives.
    assert (inputs[layers[1]] - hidden[1]).abs().max() > 0
    torch.testing.assert_close(hidden[-1], out.last_hidden_state, rtol=0, atol=0)
    assert (hidden[-1] - outputs[layers[-1]]).abs().max() > 0                      # final norm applied

    stack, _ = bb.hidden_state_stack(model, prompt, [0, 2])                         # what the action expert reads
    torch.testing.assert_close(stack[:, 0], hidden[0], rtol=0, atol=0)
    torch.testing.assert_close(stack[:, 1], hidden[2], rtol=0, atol=0)
