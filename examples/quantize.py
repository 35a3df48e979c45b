"""Make an INT8 model from a float one with ONNX Runtime's own static quantizer.

    python examples/quantize.py build/demo/vgg16.onnx -o build/int8/vgg16_int8.onnx [--form qoperator|qdq] [--preprocess]

Activations become uint8, weights int8 (per channel with --per-channel), calibrated on seeded
random images (--calibration N of them): the weights are random too, so no real data is lost.
With your own model, calibrate on real frames instead (onnxruntime.quantization's
CalibrationDataReader). --preprocess first runs ONNX Runtime's recommended `quant_pre_process`
(it folds BatchNormalization into the convolutions, so a Conv -> Relu -> GlobalAveragePool
becomes QLinearConv -> QLinearGlobalAveragePool). halpc splits both forms, either way.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


class SeededImages(CalibrationDataReader):
    """`count` standard-normal inputs of the model's input shape, the same every run."""

    def __init__(self, model: Path, count: int, seed: int = 0) -> None:
        graph = onnx.load(str(model), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        rng = np.random.default_rng(seed)
        batches = []
        for _ in range(count):
            feeds = {}
            for value in graph.input:
                if value.name in inits:
                    continue
                shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
                feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
            batches.append(feeds)
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def quantize(model: Path, out: Path, form: str = "qoperator", per_channel: bool = False,
             calibration: int = 4, seed: int = 0, input_shapes: dict | None = None, preprocess: bool = False) -> Path:
    """`input_shapes` fixes dynamic input dims first (halpc's loader: {"images": (1, 3, 320, 320)})."""
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice
    out.parent.mkdir(parents=True, exist_ok=True)
    if input_shapes:
        from halpc.inputs.model import load_model

        fixed = out.with_name(out.stem + ".float.onnx")
        onnx.save(load_model(model, input_shapes).proto, str(fixed))
        model = fixed
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        folded = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(model), str(folded), skip_symbolic_shape=True)  # symbolic shapes need sympy
        model = folded
    quantize_static(str(model), str(out), SeededImages(model, calibration, seed),
                    quant_format=QuantFormat.QOperator if form == "qoperator" else QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--form", choices=("qoperator", "qdq"), default="qoperator")
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--calibration", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preprocess", action="store_true", help="fold BatchNormalization first (quant_pre_process)")
    args = parser.parse_args()
    print(quantize(args.model, args.output, args.form, args.per_channel, args.calibration, args.seed,
                   preprocess=args.preprocess))


if __name__ == "__main__":
    main()
