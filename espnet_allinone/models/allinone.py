"""``model: allinone``: one training step runs several subsystems of one encoder.

Why a model class (and not a Trainer subclass): ESPnet's stock trainer then
does everything else unchanged -- AMP, DDP, ``accum_grad``, ``grad_clip``,
``--resume``, n-best averaging, ``best_model_criterion`` -- and DDP sees one
forward and one backward per step, so the ranks cannot fall out of step.
The price is memory: the K paths of a step are K encoder graphs held until
the single backward (less than K single steps' graphs together, and less
time than K single steps, since the frontend and the float subsampling run
once; ``benchmarks/bench_training.py step`` measures both, figures in
``docs/experiments/training_recipe.md``). A Trainer subclass
could backward each path separately, but would have to reimplement the
stock step loop (AMP scaler, DDP loss weighting, accumulation, clipping) and
keep it in step with ESPnet; DeepSpeed refuses custom trainers.

Per step: the frontend, SpecAug and normalisation run ONCE (every path sees
the same augmented features); the encoder (switched with
``encoder.use_subsystem``), CTC and the attention decoder run once per path.
The sampled paths come from :class:`SubsystemSampler`, seeded from
``(sampling_seed, step)``; the step counter is the buffer ``sampler_step``,
so it is saved in every checkpoint and ``--resume`` continues the sequence,
and every DDP rank draws the same paths (same graph, same stats keys).

Unsampled quantizer scales (bits not drawn this step) get no gradient: DDP
needs ``unused_parameters: true`` (the ``conf/train_allinone_*`` YAMLs set it).

``model_conf`` options (besides the stock ones):

- ``sampling`` (``sandwich`` | ``all`` | ``random`` | ``explicit``), ``num_random``,
  ``subsystems`` (the list for ``all``/``explicit``; the pool for the others),
  ``path_weights`` (one per path of a step; see ``sampling.py`` for the order),
  ``sampling_seed``; ``draw_weights`` (``{subsystem: weight}``, default uniform): how
  likely each randomly drawn subsystem is; ``mixed_share`` (default 0): the share of random paths that are
  mixed records (per block its own precision and width, ``mixed_per_module``: per
  module kind), run through ``encoder.use_arch`` (needs an encoder that resolves
  architecture records);
- ``distill_weight``, ``distill_temperature``: KL from the largest path (teacher,
  detached) to every other path, on CTC frame posteriors and attention-decoder
  token posteriors, weighted like the ASR loss (``ctc_weight``); a positive
  weight needs the largest subsystem in every step (sandwich, or an all/explicit
  list containing it). Default 0 (off): from the first update it holds back
  every path (see ``distill_start_steps``), so the recipe configs turn it on
  together with a delayed start (0.5 in the default recipe; 1.0 at paper
  scale, as the paper does);
- ``distill_start_steps``: the KL term joins after N updates (its value is logged
  from the start). From step 0 the teacher is untrained and the KL, flowing into
  the weights the teacher shares, holds every path near its first outputs;
- ``distill_twin_weight`` (default 0): KL from each quantized path's float twin
  (same depth and width; its logits from this step when the twin ran, else from
  one forward without gradient) to the quantized path, at ``distill_temperature``,
  once the quantized paths have joined and from ``distill_start_steps``; logged as
  ``kl_twin`` (0 on float paths, their own twins, and before it joins: no extra
  forward then). Sampled subsystems only: mixed
  records and pruned paths keep the largest path as their one teacher;
- ``float_warmup_steps``: for the first N updates every path runs its float twin
  (same depth and width; stats keep the path's own key), so depth and width
  settle before the quantizers join (a precision curriculum);
- ``pruned_precisions`` (with ``encoder_conf.prune_targets``): the pruned paths run
  every step, each target in ``float`` (default) or at ``all`` the space's precisions
  (so its low-bit forms meet quantization in training, not first at extraction); the
  size penalty is added once per target, on its float path;
- ``valid_subsystems``: evaluated every epoch (default: largest, smallest);
- ``share_input_layer`` (default true): run the subsampling front once per step
  and front precision; ``sampling_log``: append ``rank= step= paths=`` lines to this file
  (``{rank}`` is formatted), for checking what each DDP rank ran.

Training stats: every key is reported on every step, so ESPnet's log (which
averages each key over a window and prints ``nan`` for a key missing from it)
shows no ``nan`` in a healthy run. The paths that run every step (sandwich's
largest and smallest; every path of ``all``/``explicit``) report
``loss_<sub>``, ``loss_ctc_<sub>``, ``loss_att_<sub>``, ``acc_<sub>``,
``kl_<sub>``; the paths drawn at random (sandwich's ``num_random``, every
path of ``random``) report the same stats averaged over that step's random
paths as ``loss_random``, ``loss_ctc_random``, ``loss_att_random``,
``acc_random``, ``kl_random`` (which ones ran: ``sampling_log``). ``loss`` is
the weighted sum that is optimised. In eval mode every subsystem in ``valid_subsystems`` is evaluated with the
stock loss and its keys get the ``_<sub>`` suffix (``loss_d2-w0.5-int4``,
``cer_ctc_d4-w1-fp`` ...); the plain keys (``loss``, ``acc``, ``cer_ctc``)
are those of the largest validated subsystem, so a stock
``best_model_criterion`` works unchanged and may also name any suffixed key.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from espnet2.asr.espnet_model import ESPnetASRModel, autocast_type
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet_allinone.encoders.protocol import (
    ElasticEncoder,
    ExtractableEncoder,
    elastic_encoder_names,
    encoder_violations,
)
from espnet_allinone.models.packed import decoder_layers, output_layers
from espnet_allinone.precision import FLOAT_BITS, precision_name
from espnet_allinone.pruning.distill import LayerDistillation, block_outputs
from espnet_allinone.pruning.targets import target_key
from espnet_allinone.search.records import MixedRecord, build_arch, uniform_record
from espnet_allinone.subsystem import Subsystem
from espnet_allinone.train.ddp_exit import install_exit_yield
from espnet_allinone.train.distill import length_mask, masked_kl
from espnet_allinone.train.sampling import (
    StepPaths,
    SubsystemSampler,
    check_path_weights,
)

_LOG = logging.getLogger(__name__)

PRUNED_PRECISIONS = ("float", "all")
"""Precisions the pruned paths train at: float only, or every precision of the space."""

LAYER_TEACHERS = ("self", "frozen")
"""Teachers of layer-wise distillation: the same weights with the gates open (the
step's largest path), or a frozen copy of the encoder at the first step."""

RANDOM_KEY = "random"
"""Suffix of the stats averaged over a step's randomly drawn paths (``loss_random`` ...)."""


def _check_steps(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@contextmanager
def _capture_output(module: torch.nn.Module) -> Iterator[list]:
    """Record the first output of ``module`` while the block runs (reuses stock loss code)."""
    seen: list = []

    def hook(_mod, _inp, out):
        if not seen:
            seen.append(out)

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


class ESPnetAllInOneASRModel(ESPnetASRModel):
    """ESPnetASRModel whose training step runs several sampled subsystems."""

    def __init__(
        self,
        *args: Any,
        sampling: str = "sandwich",
        num_random: int = 1,
        subsystems: str | list[str] | None = None,
        path_weights: list[float] | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        distill_start_steps: int = 0,
        valid_subsystems: str | list[str] | None = None,
        sampling_seed: int = 0,
        sampling_log: str | None = None,
        share_input_layer: bool = True,
        layer_distill_weight: float = 0.0,
        layer_distill_teacher: str = "self",
        pruned_precisions: str = "float",
        float_warmup_steps: int = 0,
        mixed_share: float = 0.0,
        mixed_per_module: bool = False,
        draw_weights: dict[str, float] | None = None,
        distill_twin_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._check_encoder()
        space = self.encoder.space
        if self.use_transducer_decoder or getattr(self, "use_linear_decoder", False):
            raise ValueError(
                "model: allinone trains CTC and/or attention-decoder models; "
                "a transducer or linear decoder is not supported"
            )
        if self.interctc_weight != 0.0:
            raise ValueError(
                f"model: allinone does not support interctc_weight "
                f"(got {self.interctc_weight}); set it to 0.0"
            )
        self.space = space
        self.sampler = SubsystemSampler(
            space, strategy=sampling, num_random=num_random,
            subsystems=subsystems, seed=sampling_seed,
            mixed_share=mixed_share, mixed_per_module=mixed_per_module,
            draw_weights=draw_weights,
        )
        if self.sampler.mixed_share > 0:
            self._check_mixed()
        self.path_weights = check_path_weights(path_weights, self.sampler.num_paths, sampling)
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}")
        if distill_weight > 0 and not self.sampler.always_has_largest:
            raise ValueError(
                f"distill_weight {distill_weight} needs a teacher path: the largest "
                f"subsystem {space.largest} must run every step, but sampling "
                f"{sampling!r} with subsystems {subsystems!r} does not always include it; "
                "use sampling sandwich, or list it, or set distill_weight 0"
            )
        _check_steps("distill_start_steps", distill_start_steps)
        self.distill_start_steps = distill_start_steps
        self.distill_weight = float(distill_weight)
        self.distill_temperature = float(distill_temperature)
        self.distill_twin_weight = self._check_twin_weight(distill_twin_weight)
        self.teacher = space.largest
        if valid_subsystems is None:
            valid = [space.largest, space.smallest]
        else:
            valid = space.resolve(valid_subsystems)
        self.valid_subsystems: list[Subsystem] = list(dict.fromkeys(valid))
        self.sampling_log = sampling_log
        _check_steps("float_warmup_steps", float_warmup_steps)
        self.float_warmup_steps = float_warmup_steps
        # The encoder's shared front (a Conformer's subsampling ``embed``) is outside
        # the search space: every path with the same front bits computes the same
        # output, so it runs once per step and precision (a large share of a CPU step).
        self.share_input_layer = bool(share_input_layer)
        self._attach_output_layers()
        # The sampler position: in the state dict, hence in every checkpoint.
        self.register_buffer("sampler_step", torch.zeros((), dtype=torch.long))
        self._setup_pruning(layer_distill_weight, layer_distill_teacher, pruned_precisions)
        install_exit_yield()  # a DDP rank's clean exit (see ddp_exit)

    def _check_encoder(self) -> None:
        """Refuse an encoder without subsystems by name; note once whether it is a whole
        family encoder (``ExtractableEncoder``: records, output layers, a shared front)
        or only switches subsystems (``ElasticEncoder``, e.g. a small test encoder)."""
        missing = encoder_violations(self.encoder, ElasticEncoder)
        if missing:
            raise ValueError(
                f"model: allinone needs an elastic encoder (encoder: one of "
                f"{', '.join(elastic_encoder_names())}), got {type(self.encoder).__name__} "
                f"({'; '.join(missing)})"
            )
        self._record_gaps = encoder_violations(self.encoder, ExtractableEncoder)

    def _check_twin_weight(self, weight: float) -> float:
        """A float twin needs float among the space's precisions and a quantized one."""
        if not weight >= 0:
            raise ValueError(f"distill_twin_weight must be >= 0, got {weight}")
        bits = self.space.bits
        if weight > 0 and (FLOAT_BITS not in bits or bits == (FLOAT_BITS,)):
            raise ValueError(
                f"distill_twin_weight {weight} needs float twins of quantized paths, but "
                f"encoder_conf.precisions is {[precision_name(b) for b in bits]}; add fp "
                "and a quantized precision, or set distill_twin_weight 0")
        return float(weight)

    def _check_mixed(self) -> None:
        """Mixed records run through the encoder's records: refuse an encoder without them
        now, by name, not at the first mixed draw."""
        if self._record_gaps:
            raise ValueError("mixed_share > 0 needs an encoder that runs architecture "
                             f"records; {'; '.join(self._record_gaps)}")
        try:
            build_arch(self.encoder, uniform_record(self.space, self.space.smallest))
        except ValueError as e:
            raise ValueError(f"mixed_share > 0: {e}") from None

    def _use_path(self, path: Subsystem | MixedRecord):
        """Run a block with ``path`` active (a subsystem, or a mixed record's arch)."""
        if isinstance(path, MixedRecord):
            return self.encoder.use_arch(build_arch(self.encoder, path))
        return self.encoder.use_subsystem(path)

    def _attach_output_layers(self) -> None:
        """Hand the CTC linear (and the decoder's output layer) to the encoder, which
        switches their bits with every record when ``part_precisions.output`` makes
        them low-bit; likewise the decoder blocks' Linears (``part_precisions.decoder``)."""
        if not self._record_gaps:
            self.encoder.attach_output_layers(output_layers(self))
            parts = self.encoder.part_precisions
            if parts.quantized_bits("decoder", self.space.bits):
                self.encoder.attach_decoder_layers(decoder_layers(self))

    def _setup_pruning(self, weight: float, teacher: str, precisions: str) -> None:
        """Pruned paths (every step: each target in float, and at every precision of the
        space with ``pruned_precisions: all``) and layer distillation."""
        if precisions not in PRUNED_PRECISIONS:
            raise ValueError(f"pruned_precisions {precisions!r}; valid: "
                             f"{', '.join(PRUNED_PRECISIONS)}")
        float_bits = self.space.largest.bits
        targets = [s for s in self.space.pruned if s.bits == float_bits]
        if precisions == "all":  # each target's float path carries its size penalty
            extra = [s for s in self.space.pruned if s.bits != float_bits]
            targets = [p for t in targets for p in (t, *(s for s in extra if s.prune == t.prune))]
        self.pruned_paths = targets
        if weight < 0:
            raise ValueError(f"layer_distill_weight must be >= 0, got {weight}")
        if teacher not in LAYER_TEACHERS:
            raise ValueError(f"layer_distill_teacher {teacher!r}; valid: "
                             f"{', '.join(LAYER_TEACHERS)}")
        if weight > 0 and not self.pruned_paths:
            raise ValueError("layer_distill_weight > 0 needs pruning targets "
                             "(encoder_conf.prune_targets)")
        if weight > 0 and teacher == "self" and not self.sampler.always_has_largest:
            raise ValueError("layer distillation from the same weights (layer_distill_teacher: "
                             f"self) needs the largest subsystem {self.space.largest} every "
                             "step: use sampling sandwich, or layer_distill_teacher: frozen")
        self.layer_distill_weight = float(weight)
        self.layer_distill_teacher = teacher
        if weight > 0:
            self.layer_distill = LayerDistillation(len(self.encoder.blocks),
                                                   self.encoder.output_size())

    # --- the shared front part ------------------------------------------
    def _features(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frontend + SpecAug + normalisation + pre-encoder: once per step.

        The first half of ESPnet's ``encode``, which cannot be called per path:
        it would recompute the frontend K times and draw K different SpecAug
        masks, while every path must see the same augmented features (the
        paths are compared, and distilled, on the same input). The parts are
        ESPnet's own modules; only their order is repeated here.
        """
        with torch.amp.autocast("cuda", enabled=self.autocast_frontend, dtype=autocast_type):
            feats, feats_lengths = self._extract_feats(speech, speech_lengths)
            if self.specaug is not None and self.training:
                feats, feats_lengths = self.specaug(feats, feats_lengths)
            if self.normalize is not None:
                feats, feats_lengths = self.normalize(feats, feats_lengths)
        if self.preencoder is not None:
            feats, feats_lengths = self.preencoder(feats, feats_lengths)
        return feats, feats_lengths

    def _encode_features(
        self, feats: torch.Tensor, feats_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder (+ post-encoder) of the active subsystem."""
        if getattr(self.encoder, "interctc_use_conditioning", False):
            out, out_lens, _ = self.encoder(feats, feats_lengths, ctc=self.ctc)
        else:
            out, out_lens, _ = self.encoder(feats, feats_lengths)
        if isinstance(out, tuple):
            out = out[0]
        if self.postencoder is not None:
            out, out_lens = self.postencoder(out, out_lens)
        return out, out_lens

    # --- one path ---------------------------------------------------------
    def _path_loss(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Stock CTC/attention loss of one path, its stats and its logits (+ masks)."""
        stats: dict[str, torch.Tensor] = {}
        logits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        loss_ctc = loss_att = None
        if self.ctc_weight != 0.0:
            with _capture_output(self.ctc.ctc_lo) as seen:
                loss_ctc, _ = self._calc_ctc_loss(enc, enc_lens, text, text_lengths)
            logits["ctc"] = (seen[0], length_mask(enc_lens, seen[0].size(1)))
            stats["loss_ctc"] = loss_ctc.detach()
        if self.ctc_weight != 1.0:
            with _capture_output(self.decoder) as seen:
                loss_att, acc, _, _ = self._calc_att_loss(
                    enc, enc_lens, text, text_lengths.clone()
                )
            dec = seen[0][0]
            logits["att"] = (dec, length_mask(text_lengths + 1, dec.size(1)))
            stats["loss_att"] = loss_att.detach()
            if acc is not None:
                stats["acc"] = torch.as_tensor(acc)
        if loss_att is None:
            loss = loss_ctc
        elif loss_ctc is None:
            loss = loss_att
        else:
            loss = self.ctc_weight * loss_ctc + (1 - self.ctc_weight) * loss_att
        return loss, stats, logits

    def _kl(self, teacher: dict, student: dict) -> torch.Tensor:
        """Distillation loss, weighted across CTC/attention like the ASR loss."""
        parts = []
        for key, weight in (("ctc", self.ctc_weight), ("att", 1.0 - self.ctc_weight)):
            if key in student and weight > 0:
                t_logits, _ = teacher[key]
                s_logits, mask = student[key]
                parts.append(
                    weight * masked_kl(t_logits, s_logits, mask, self.distill_temperature)
                )
        return sum(parts)

    # --- forward ------------------------------------------------------------
    def next_paths(self, step: int) -> StepPaths:
        """This step's paths (``step``: the counter's value); advances the counter."""
        drawn = self.sampler.draw(step)
        paths = drawn.paths
        self.sampler_step += 1
        if self.sampling_log:
            rank = (
                torch.distributed.get_rank()
                if torch.distributed.is_available() and torch.distributed.is_initialized()
                else 0
            )
            path = self.sampling_log.format(rank=rank)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"rank={rank} step={step} paths={','.join(map(str, paths))}\n")
        if _LOG.isEnabledFor(logging.DEBUG):  # no string building in the training step
            _LOG.debug("allinone step %d paths %s", step, ",".join(map(str, paths)))
        return drawn

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Training: the sampled paths, one backward graph. Eval: ``valid_subsystems``."""
        if not self.training:
            return self._forward_valid(speech, speech_lengths, text, text_lengths, **kwargs)
        batch_size = speech.shape[0]
        text[text == -1] = self.ignore_id
        text = text[:, : text_lengths.max()]
        feats, feats_lengths = self._features(speech, speech_lengths)
        step = int(self.sampler_step)
        float_phase = step < self.float_warmup_steps
        distill_weight = self.distill_weight if step >= self.distill_start_steps else 0.0
        twin_weight = 0.0 if float_phase or step < self.distill_start_steps \
            else self.distill_twin_weight
        drawn = self.next_paths(step)
        step_logits: dict[Subsystem, dict] = {}
        stats: dict[str, torch.Tensor] = {}
        random_stats: dict[str, list[torch.Tensor]] = {}
        teacher: dict | None = None
        teacher_layers: list[torch.Tensor] = []
        if self._distils_layers("frozen"):
            teacher_layers = self._frozen_teacher_layers(feats, feats_lengths)
        total = None
        with self._shared_input_layer():
            for i, (sub, weight) in enumerate(zip(drawn.paths, self.path_weights)):
                capture = sub == self.teacher and self._distils_layers("self")
                running = sub.with_precision("fp") if float_phase else sub
                with self._use_path(running), self._layers(capture) as layers:
                    enc, enc_lens = self._encode_features(feats, feats_lengths)
                    # inside: the output layers and decoder blocks run at the path's bits
                    loss, pstats, logits = self._path_loss(enc, enc_lens, text, text_lengths)
                teacher_layers = layers if capture else teacher_layers
                if isinstance(running, Subsystem):
                    step_logits[running] = logits
                if self.distill_twin_weight > 0 and isinstance(sub, Subsystem):
                    kl = (self._twin_kl(sub, logits, step_logits, feats, feats_lengths,
                                        text, text_lengths)
                          if twin_weight > 0 and not sub.is_float  # a float path is its twin
                          else torch.zeros((), device=feats.device))
                    pstats["kl_twin"] = kl.detach()
                    loss = loss + twin_weight * kl
                if self.distill_weight > 0:
                    if sub == self.teacher:
                        teacher = logits
                    else:
                        assert teacher is not None, "the teacher path runs first"
                        kl = self._kl(teacher, logits)
                        pstats["kl"] = kl.detach()
                        loss = loss + distill_weight * kl
                pstats["loss"] = loss.detach()
                if i < len(drawn.fixed):
                    stats.update((f"{key}_{sub}", value) for key, value in pstats.items())
                else:
                    for key, value in pstats.items():
                        random_stats.setdefault(key, []).append(value)
                total = weight * loss if total is None else total + weight * loss
            if self.pruned_paths:
                self.encoder.pruning.step += 1
                for sub in self.pruned_paths:
                    running = sub.with_precision("fp") if float_phase else sub
                    loss, pstats = self._pruned_path_loss(
                        running, feats, feats_lengths, text, text_lengths, teacher,
                        teacher_layers, distill_weight, penalise=sub.bits == self.teacher.bits)
                    stats.update((f"{key}_{sub}", value) for key, value in pstats.items())
                    total = total + loss
        for key, values in random_stats.items():
            stats[f"{key}_{RANDOM_KEY}"] = torch.stack(values).mean()
        stats["loss"] = total.detach()
        total, stats, weight = force_gatherable((total, stats, batch_size), total.device)
        return total, stats, weight

    def _twin_kl(self, sub: Subsystem, logits: dict, step_logits: dict[Subsystem, dict],
                 feats: torch.Tensor, feats_lengths: torch.Tensor,
                 text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """KL from quantized ``sub``'s float twin to ``sub``: the twin's logits from this
        step (``step_logits``), else from one forward without gradient."""
        twin = sub.with_precision("fp")
        teacher = step_logits.get(twin)
        if teacher is None:
            with torch.no_grad(), self._use_path(twin):
                enc, enc_lens = self._encode_features(feats, feats_lengths)
                _, _, teacher = self._path_loss(enc, enc_lens, text, text_lengths)
            step_logits[twin] = teacher
        return self._kl(teacher, logits)

    # --- pruned paths -------------------------------------------------------
    def _distils_layers(self, teacher: str) -> bool:
        return self.layer_distill_weight > 0 and self.layer_distill_teacher == teacher

    def _layers(self, capture: bool):
        """Collect the encoder blocks' outputs while the block runs (if ``capture``)."""
        return block_outputs(self.encoder.blocks) if capture else nullcontext([])

    @torch.no_grad()
    def _frozen_teacher_layers(self, feats: torch.Tensor,
                               lengths: torch.Tensor) -> list[torch.Tensor]:
        """Block outputs of a frozen copy of the encoder as it was at this process's first
        step (after ``init_param``; after ``--resume``, the resumed weights), unpruned and
        float: the other teacher DPHuBERT uses."""
        frozen = self.__dict__.get("_frozen_encoder")  # not a submodule: not trained/saved
        if frozen is None:
            frozen = copy.deepcopy(self.encoder).eval()
            frozen.set_subsystem(self.space.largest)
            self.__dict__["_frozen_encoder"] = frozen
        with block_outputs(frozen.blocks) as layers:
            frozen(feats, lengths)
        return list(layers)

    def _pruned_path_loss(self, sub: Subsystem, feats: torch.Tensor, feats_lengths: torch.Tensor,
                          text: torch.Tensor, text_lengths: torch.Tensor, teacher: dict | None,
                          teacher_layers: list[torch.Tensor], distill_weight: float,
                          penalise: bool = True):
        """One pruned path: the full model through the target's sampled gates at the
        path's precision, its ASR loss, the Lagrangian towards the (ramped) target size
        (``penalise``: once per target and step, on its float path), and the distillations
        (the KL at this step's ``distill_weight``: zero before ``distill_start_steps``)."""
        capture = self.layer_distill_weight > 0
        with self.encoder.gated(sub), self._layers(capture) as layers:
            enc, enc_lens = self._encode_features(feats, feats_lengths)
            loss, pstats, logits = self._path_loss(enc, enc_lens, text, text_lengths)
        penalty, fraction, target = self.encoder.pruning.penalty(sub.prune)
        if penalise:
            loss = loss + penalty
        if self.distill_weight > 0 and teacher is not None:
            kl = self._kl(teacher, logits)
            pstats["kl"] = kl.detach()
            loss = loss + distill_weight * kl
        if capture:
            layer_loss = self.layer_distill(list(layers), teacher_layers, enc_lens)
            pstats["layer_distill"] = layer_loss.detach()
            loss = loss + self.layer_distill_weight * layer_loss
        lambda1, lambda2 = self.encoder.pruning.lagrangians[target_key(sub.prune)].multipliers()
        pstats.update(loss=loss.detach(), expected_size=fraction.detach(),
                      target_size=torch.tensor(target), lambda1=lambda1.detach(),
                      lambda2=lambda2.detach())
        return loss, pstats

    @contextmanager
    def _shared_input_layer(self) -> Iterator[None]:
        """Within the block, the encoder's shared front (``shared_front``) computes once
        per front precision and channel count, then returns that output again for the
        same input (paths whose front runs at the same bits and channels compute the
        same output)."""
        embed = self.encoder.shared_front() if not self._record_gaps else None
        if not self.share_input_layer or embed is None:
            yield
            return
        original = embed.forward
        outputs: dict[tuple[int, int | None], dict] = {}

        def forward(x: torch.Tensor, *args: Any) -> Any:
            arch = self.encoder.active_arch
            cache = outputs.setdefault((arch.front_bits, arch.front_channels), {})
            # an output computed without gradient (a twin teacher's) never feeds a path
            # that trains the front
            if cache and cache["x"] is x and (cache["grad"] or not torch.is_grad_enabled()) \
                    and len(args) == len(cache["args"]) and all(
                torch.equal(a, b) for a, b in zip(args, cache["args"])
            ):
                return cache["out"]
            out = original(x, *args)
            cache.update(x=x, args=args, out=out, grad=torch.is_grad_enabled())
            return out

        embed.forward = forward
        try:
            yield
        finally:
            del embed.forward

    def _forward_valid(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Stock loss of every validated subsystem, keys suffixed with the subsystem."""
        stats: dict[str, torch.Tensor] = {}
        plain_sub = (
            self.teacher if self.teacher in self.valid_subsystems else self.valid_subsystems[0]
        )
        plain: tuple = ()
        for sub in self.valid_subsystems:
            with self.encoder.use_subsystem(sub):
                loss, sub_stats, weight = super().forward(
                    speech, speech_lengths, text.clone(), text_lengths, **kwargs
                )
            # what the model cannot compute (a CTC-only model's attention accuracy) is
            # None: left out, as stock ESPnet's log leaves it out, instead of a nan
            sub_stats = {k: v for k, v in sub_stats.items() if v is not None}
            for key, value in sub_stats.items():
                stats[f"{key}_{sub}"] = value
            if sub == plain_sub:
                plain = (loss, sub_stats, weight)
        loss, plain_stats, weight = plain
        stats.update(plain_stats)
        return force_gatherable((loss, stats, weight), loss.device)


def _advertise_stock_options() -> None:
    """Let ``--print_config`` list the stock model options next to ours.

    ``__init__`` forwards ``*args, **kwargs`` to ``ESPnetASRModel``; ESPnet reads
    the defaults it prints from the signature, so publish the merged one.
    """
    stock = list(inspect.signature(ESPnetASRModel.__init__).parameters.values())
    ours = [
        p for p in inspect.signature(ESPnetAllInOneASRModel.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    ESPnetAllInOneASRModel.__init__.__signature__ = inspect.Signature(stock + ours)


_advertise_stock_options()
