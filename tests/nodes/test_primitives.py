import sys

from nodes.primitives import PrimitiveBoolean, PrimitiveFloat, PrimitiveInt, PrimitiveString, PrimitiveStringMultiline


def test_primitives_pass_values_through(run) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
        "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.25}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": "hi"}},
        "4": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a\nb"}},
        "5": {"class_type": "PrimitiveBoolean", "inputs": {"value": True}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": ["1", 0]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": ["3", 0]}},
    }
    result = run(prompt)
    assert result.outputs["7"]["latents"][0]["filename"] == "hi_00001_.latent"
    assert set(result.executed) == {"1", "3", "6", "7"}  # only what the output needs


def test_primitive_schema_matches_comfyui(call) -> None:
    info = PrimitiveInt.object_info()
    assert info["input"]["required"]["value"][0] == "INT"
    assert info["input"]["required"]["value"][1]["control_after_generate"] is True
    assert info["input"]["required"]["value"][1]["min"] == -sys.maxsize
    assert PrimitiveStringMultiline.object_info()["input"]["required"]["value"][1]["multiline"] is True
    assert call(PrimitiveFloat, value=1.5) == (1.5,)
    assert call(PrimitiveBoolean, value=False) == (False,)
    assert call(PrimitiveString, value="x") == ("x",)
    assert [o["output"] for o in (PrimitiveFloat.object_info(), PrimitiveBoolean.object_info())] == [["FLOAT"], ["BOOLEAN"]]
