"""``local-dpsgd``: sample-level DP, every client trains with DP-SGD (Opacus) before sending.

Client side: :func:`privacy.dpsgd.dp_train_epochs` with the client's plan (:meth:`LocalDPSGD.plan`,
calibrated for its image count over every round it could take part in); the accountant's history
persists on the node, and the reply carries only public metadata: the plan's noise multiplier and
sample rate and the client's own epsilon report. Server side: :class:`privacy.ledger.LocalDPLedger`
computes every client's spend from its image count and the rounds it was sampled in, checks each
report against it, and its maximum is the published epsilon (add/remove one image). The server
sees each update after the client's clipping and noise, which is what an inversion attacker of a
client update observes.

White-box audit (``gradient_canaries = m``): partition 0's DP-SGD carries m Dirac gradient
canaries (:mod:`privacy.whitebox`); each round its reply adds the round's per-canary sums of the
released audit block, the ledger adds them up into the record's ``whitebox`` entry, and
:meth:`LocalDPSGD.audit_canaries` hands them, with the coins, to the one-run audit.

``plant = <name>`` (:mod:`privacy.plants`): every client's step carries a planted defect the ledger
cannot see (the ``audit-power`` suite); such a row claims nothing as a result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from privacy.mechanisms.base import STEPS_KEY, DPMechanism, ServerSide, canary_problem

ACCOUNTANT_STATE_KEY = "dp-accountant"  # the node's accountant history (JSON), across rounds


class LocalDPSGD(DPMechanism):
    name = "local-dpsgd"
    description = "sample-level DP: every client trains with DP-SGD (Opacus)"
    dp_level = "sample"
    accountants = ("rdp", "prv")
    default_clip = 1.0      # per-sample clipping norm
    own_fields = ("gradient_canaries", "plant")

    def validate_own(self, s) -> str | None:
        return self.plant_rules(s) or canary_problem(s, "gradient_canaries")

    def plan(self, s, n_train: int):
        """The DP-SGD calibration of a client with ``n_train`` images (the same on server and client)."""
        from privacy.dpsgd import plan_local_dp

        return plan_local_dp(n_train=n_train, batch_size=s.batch_size, rounds=s.rounds, local_epochs=s.local_epochs,
                             target_epsilon=s.target_epsilon, delta=s.delta, max_grad_norm=self.clip(s.max_grad_norm),
                             accountant=s.accountant, grad_sample_mode=s.grad_sample_mode,
                             noise_multiplicity=s.noise_multiplicity)

    def preflight(self, s, *, test_split: Callable[[], Any], device: str, done: dict) -> None:
        """``bench verify-dp`` once per (model, input shape, conditioning, grad-sample mode)."""
        from benchmark.errors import VerificationError
        from privacy.verify import verify_dp

        ds = test_split()
        c, r = ds.images.shape[1], ds.images.shape[2]
        key = (s.model, c, r, s.class_conditional, s.grad_sample_mode)
        if key in done:
            return
        rep = verify_dp(s.model, device=device, in_channels=c, resolution=r,
                        num_classes=ds.num_classes if s.class_conditional else None, modes=(s.grad_sample_mode,))
        if not rep.passed:
            raise VerificationError(f"per-sample gradients of {s.model} ({s.grad_sample_mode}) fail verification: "
                                    + "; ".join(rep.modes[0].problems))
        done[key] = (f"verify-dp {s.model} ({c}x{r}x{r}, {s.grad_sample_mode}) ok: norm rel err "
                     f"{rep.modes[0].norm_rel_err:.1e}")

    def server_side(self, s, fedavg, *, partition_to_node: dict[int, int], num_images: dict[int, int],
                    seed: int = 0) -> ServerSide:
        from privacy.ledger import LocalDPLedger

        from privacy.whitebox import AUDITED_PARTITION

        ledger = LocalDPLedger(fedavg, plans={p: self.plan(s, n) for p, n in num_images.items()},
                               local_epochs=s.local_epochs, accountant=s.accountant, delta=s.delta,
                               partition_to_node=partition_to_node, num_images=num_images,
                               canaries={AUDITED_PARTITION: s.gradient_canaries} if s.gradient_canaries else {})
        return ServerSide(ledger, fedavg.sampled, ledger.spent, lambda: self.record(s, ledger.record()))

    def train_client(self, s, model, optimizer, images, labels, *, device: str, seed: int, state: dict,
                     partition: int, run_seed: int) -> dict:
        from privacy.dpsgd import dp_train_epochs
        from privacy.plants import get_plant
        from privacy.whitebox import AUDITED_PARTITION, CANARY_NORM_X, SCORES_KEY, AuditBlock, canary_coins

        plan = self.plan(s, len(images))
        history = json.loads(state.get(ACCOUNTANT_STATE_KEY, "[]"))
        block = None
        if s.gradient_canaries and partition == AUDITED_PARTITION:
            block = AuditBlock(canary_coins(s.gradient_canaries, run_seed), CANARY_NORM_X * plan.max_grad_norm)
        # The Poisson sampling and DP noise come from secret generators (dp_train_epochs' default).
        stats = dp_train_epochs(model, optimizer, plan, images, labels, epochs=s.local_epochs,
                                num_train_timesteps=s.num_train_timesteps, conditional=s.class_conditional,
                                device=device, seed=seed, accountant_history=history, canaries=block,
                                plant=get_plant(s.plant))
        state[ACCOUNTANT_STATE_KEY] = json.dumps(stats["history"])
        out = {STEPS_KEY: int(stats["steps"]), "epsilon": stats["epsilon"],
               "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate}
        if block is not None:  # this round's released audit block, summed (the ledger adds the rounds)
            out[SCORES_KEY] = block.take_scores()
        return out

    def audit_canaries(self, s, record: dict, seed: int) -> list:
        # The canaries' mechanism: the audited client's Poisson rate and every step it took.
        from privacy.whitebox import recorded_canaries

        return recorded_canaries(record, seed, name="dirac-gradient", unit="image")

    def columns(self, s, record: dict) -> dict:
        # The largest spend of any client (clients hold disjoint data), as the server computed it.
        return super().columns(s, record) | {"grad_sample_mode": s.grad_sample_mode,
                                             "noise_multiplicity": s.noise_multiplicity}

    def attacker_view(self, s, columns: dict) -> dict:
        # The client clips per sample and adds noise before the update leaves it.
        return {"clip": float(columns["max_grad_norm"]), "noise_multiplier": float(columns["noise_multiplier"])}
