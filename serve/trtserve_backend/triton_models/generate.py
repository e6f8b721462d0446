"""``generate``: decoupled, streaming text generation with step-level batching (GPT-2 family).

``execute`` only checks each request and hands it to the :class:`StepScheduler`, whose thread
owns the engine and streams every sequence's pieces through the request's response sender;
requests that arrive while others decode join them at the next step boundary.
"""
from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

import trtserve_contract as contract
from trtserve_backend.generation.outbox import Outbox
from trtserve_backend.generation.requests import CapacityError, GenerationInputError, GenerationLimits, parse_request
from trtserve_backend.generation.responses import ResponseSink
from trtserve_backend.generation.scheduler import StepScheduler
from trtserve_backend.generation.text import TokenBytes
from trtserve_backend.limits import RequestLimits, RequestTooLargeError
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import GenerateParameters
from trtserve_backend.triton_models._common import version_dir


def _executor(params: GenerateParameters, folder: str, model: str, args):
    if params.engine == "onnxruntime":
        from trtserve_backend.generation.ort_executor import OrtDecoderGraph, OrtExecutor

        graph = OrtDecoderGraph(os.path.join(folder, params.onnx_file), intra_op_threads=params.intra_op_threads)
        return OrtExecutor(graph, max_batch=params.max_decode_batch)
    if params.engine == "torch":
        from trtserve_backend.generation.torch_executor import TorchExecutor

        device = "cpu" if args.get("model_instance_kind") == "CPU" else f"cuda:{args.get('model_instance_device_id', 0)}"
        return TorchExecutor.from_checkpoint(
            os.path.join(folder, params.checkpoint_dir), max_batch=params.max_decode_batch, device=device,
            dtype=params.precision, graph_batch_sizes=params.graph_batch_sizes, max_length=params.context_length,
            max_prompt=params.max_prompt_tokens)
    raise ValueError(f"{model}: unknown engine {params.engine!r} (onnxruntime | torch)")


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        cfg = PythonModelConfig.from_args(args)
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise ValueError(f"{cfg.name}: the generate model must be decoupled (model_transaction_policy)")
        params = GenerateParameters.from_config(cfg)
        folder = version_dir(args)
        tokenizer_file = os.path.join(folder, params.tokenizer_file)
        self.tokenizer = Tokenizer.from_file(tokenizer_file)
        self.limits = GenerationLimits.from_parameters(params)
        self.request_limits = RequestLimits(max_text_bytes=params.max_request_text_bytes)
        self.eos_id = params.eos_token_id
        self.dtypes = {t.name: t.dtype for t in cfg.outputs}
        executor = _executor(params, folder, cfg.name, args)
        self.scheduler = StepScheduler(executor, TokenBytes.from_tokenizer_json(tokenizer_file), self.eos_id,
                                       self.limits.max_sequences, note=pb_utils.Logger.log_info,
                                       outbox=Outbox() if params.response_thread else None).start()
        self.name = cfg.name

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def execute(self, requests):
        for request in requests:
            sink = ResponseSink(pb_utils, request, self.dtypes)
            try:
                arrays = {t.name(): t.as_numpy() for t in request.inputs()}
                for name in (contract.PROMPT, contract.STOP):  # sizes only, before decoding or tokenizing
                    if name in arrays:
                        self.request_limits.check(arrays[name], name)
                self.scheduler.submit(parse_request(arrays, self._encode, self.limits, self.eos_id), sink)
            except (GenerationInputError, RequestTooLargeError) as e:
                sink.fail(str(e), "INVALID_ARG")
            except CapacityError as e:
                sink.fail(str(e), "UNAVAILABLE")
            except Exception as e:  # noqa: BLE001 - this request fails, the model stays up
                sink.fail(f"{contract.PROMPT}: {e}")
        return None

    def finalize(self):
        self.scheduler.stop()
        outbox = self.scheduler.outbox
        sent = f" responses={outbox.sent} joined_pieces={outbox.joined}" if outbox is not None else ""
        pb_utils.Logger.log_info(f"{self.name} stats: {self.scheduler.stats.summary()}{sent}")

