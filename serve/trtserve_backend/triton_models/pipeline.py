"""``<name>`` as one Python model: inputs -> tokenizer -> engine -> postprocess in one hop (pipeline.py).

Same name, inputs and outputs as the ensemble it replaces; used where the engine runs in Python
(ONNX Runtime on the CPU, the torch engine with CUDA graphs on a GPU: KIND_GPU instances).
"""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from trtserve_backend.busy import BusyBoard
from trtserve_backend.idle_poll import ActivityStamp, IdlePoller
from trtserve_backend.limits import RequestLimits
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import (OrtEncoderParameters, PipelineParameters, TokenizerParameters,
                                         is_hot_instance)
from trtserve_backend.pipeline import PhaseClock, Pipeline
from trtserve_backend.tokenize import InvalidTextError
from trtserve_backend.triton_models._common import (OutputTensors, error_response, fixed_output_values,
                                                    instance_device, read_items, version_dir)


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_names = [t.name for t in cfg.inputs]
        params = PipelineParameters.from_config(cfg)
        backend = params.engine_backend
        instance = args.get("model_instance_name", "")
        #: idle_poll_ms: when this server last executed (every instance stamps it), and the first
        #: instance to ask polls the host's cores while it is recent (one poller per server),
        #: forked before the engine loads (nothing of CUDA in the pollers).
        #: TRTSERVE_ACTIVITY_STAMP: the stamp alone (bench/idle_ab.py hosts the poller itself).
        stamp = params.idle_poll_ms or os.environ.get("TRTSERVE_ACTIVITY_STAMP")
        self.activity = ActivityStamp.for_server() if stamp else None
        self.poller = IdlePoller(self.activity, params.idle_poll_ms) if params.idle_poll_ms else None
        if self.poller is not None and self.poller.polling:
            pb_utils.Logger.log_info(f"{instance}: polling {len(self.poller.children)} cores while the server "
                                     f"executed within {params.idle_poll_ms} ms")
        elif self.poller is not None and self.poller.declined:
            pb_utils.Logger.log_warn(f"{instance}: idle_poll_ms set, not polling: {self.poller.declined}")
        device = instance_device(args) if backend == "torch" else "cpu"
        hot = is_hot_instance(instance, cfg.name)
        #: every instance flags its executions where the preferred one runs alone on more threads
        self.board = (BusyBoard.for_instance(cfg.name, instance, hot) if backend == "onnxruntime"
                      and OrtEncoderParameters.from_config(cfg).solo_intra_op_threads > 0 else None)
        self.pipeline = Pipeline.from_config(cfg, version_dir(args), device, hot=hot,
                                             others_busy=self.board and self.board.others_busy)
        threads = getattr(self.pipeline.engine, "threads", None)
        if threads:  # ONNX Runtime: which threading this instance got (hot or pool)
            pb_utils.Logger.log_info(f"{instance}: ONNX Runtime {threads}")
        self.output_tensors = OutputTensors(cfg.outputs, fixed_output_values(self.pipeline.postprocess))
        tokenizer = TokenizerParameters.from_config(cfg)
        self.limits = RequestLimits(tokenizer.max_request_text_bytes, tokenizer.max_request_texts)
        self.name = cfg.name
        if os.environ.get("TRTSERVE_PHASE_TIMES"):  # where an execution's time goes (benchmarks)
            self.pipeline.clock = PhaseClock()

    def execute(self, requests):
        if self.activity is None:
            return self._execute_board(requests)
        self.activity.begin()
        try:
            return self._execute_board(requests)
        finally:
            self.activity.end()

    def _execute_board(self, requests):
        if self.board is None:
            return self._execute(requests)
        with self.board.busy():
            return self._execute(requests)

    def _execute(self, requests):
        clock = self.pipeline.clock
        clock.start()
        items, errors = read_items(requests, self.input_names, self.limits)
        clock.lap("read")
        try:
            responses = self._respond(requests, items, errors)
        finally:
            clock.lap("respond")
            clock.executions += 1
        return responses

    def _respond(self, requests, items, errors):
        try:
            results = self.pipeline.run(items)
        except Exception as e:  # noqa: BLE001 - every request gets the error, the model stays up
            return [errors.get(i) and error_response(errors[i], invalid_argument=True)
                    or error_response(f"inference failed: {e}") for i in range(len(requests))]
        responses = []
        for i, values in enumerate(results):
            if i in errors:
                responses.append(error_response(errors[i], invalid_argument=True))
            elif isinstance(values, Exception):  # what is wrong with this request alone
                responses.append(error_response(str(values), invalid_argument=isinstance(values, InvalidTextError)))
            else:
                responses.append(pb_utils.InferenceResponse(self.output_tensors(values)))
        return responses

    def finalize(self):
        if self.poller is not None:
            self.poller.close()
        if self.activity is not None:
            self.activity.close()
        if self.board is not None:
            self.board.close()
        engine = self.pipeline.engine
        if getattr(engine, "solo", None) is not None:
            pb_utils.Logger.log_info(f"{self.name}: ONNX Runtime ran alone on every core {engine.solo_runs} of "
                                     f"{engine.runs} runs")
        if self.pipeline.clock.executions:
            pb_utils.Logger.log_info(f"{self.name} phase times: {self.pipeline.clock.summary()}")
