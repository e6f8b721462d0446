"""``<name>_encoder`` for the torch backend: TorchScript on the GPU with CUDA graphs (torch_engine.py).

Runs as a Python-backend model with ``instance_group { kind: KIND_GPU }``. Inputs arrive as
Triton tensors: host tensors are wrapped without a copy and cross to the GPU in one pinned
copy per execution; GPU-resident ones (FORCE_CPU_ONLY_INPUT_TENSORS "no") come in through
DLPack. The output goes back to host memory in one copy per execution (``output_device``
"cpu", for the CPU postprocess) or stays on the GPU and leaves through DLPack ("gpu").
"""
from __future__ import annotations

import torch
import torch.utils.dlpack
import triton_python_backend_utils as pb_utils

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import TorchEncoderParameters
from trtserve_backend.torch_engine import TorchEncoder
from trtserve_backend.triton_models._common import error_response, instance_device, version_dir


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = TorchEncoderParameters.from_config(cfg)
        self.inputs = cfg.inputs
        self.output = cfg.single_output()
        self.output_on_gpu = params.output_device == "gpu"
        device = instance_device(args)
        self.engine = TorchEncoder.from_parameters(params, version_dir(args), [t.name for t in cfg.inputs], device)
        self.output_on_gpu = self.output_on_gpu and device != "cpu"

    @staticmethod
    def _tensor(request, name: str):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise KeyError(f"request lacks input '{name}'")
        if tensor.is_cpu():
            return torch.from_numpy(tensor.as_numpy())
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())

    def _response(self, out):
        if self.output_on_gpu:
            return pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack(self.output.name, torch.utils.dlpack.to_dlpack(out.contiguous()))])
        array = out.numpy().astype(self.output.dtype, copy=False)
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output.name, array)])

    def execute(self, requests):
        try:
            feeds = [{t.name: self._tensor(r, t.name) for t in self.inputs} for r in requests]
            outputs = self.engine.run_requests(feeds, to_host=not self.output_on_gpu)
        except Exception as e:  # noqa: BLE001 - every request gets the error, the model stays up
            return [error_response(f"encoder failed: {e}") for _ in requests]
        return [self._response(out) for out in outputs]
