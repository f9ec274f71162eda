"""Server glue of the ``central-dp-sampled`` mode: a scenario to a :class:`PoissonSampledDP` strategy.

:func:`benchmark.federation.server_app.run_federation` calls :func:`sampled_strategy` where the mode's
``client_sampling`` is ``poisson`` (instead of SeededFedAvg inside Flower's fixed-clipping wrapper);
the reply screening (``ScreenedAggregation``, minimum 0 valid replies) still runs first, so a
dropped, late or invalid client is just absent from the round's sum.

The noise multiplier is calibrated here for the scenario's target epsilon after all rounds with
the amplified accountant (:func:`privacy.sampled_accounting.client_sampled_noise`). The sample and
the noise come from secret generators (see :mod:`privacy.central_sampled` for why the run seed must
not choose the participants).
"""

from __future__ import annotations

from benchmark.scenarios import Scenario
from privacy.central_sampled import AdaptiveClipping, PoissonSampledDP
from privacy.modes import get_dp_mode
from privacy.sampled_accounting import (SAMPLED_CLIENT_ACCOUNTANT, adaptive_update_noise, client_sampled_noise,
                                        default_count_noise)


def sampled_strategy(scenario: Scenario, partition_to_node: dict[int, int], **rngs) -> tuple[PoissonSampledDP, dict]:
    """The strategy and the ``central_dp`` entry of ``history.json`` (before the run's epsilon)."""
    mode = get_dp_mode(scenario.dp_mode)
    q = float(scenario.client_sample_rate)
    clip = mode.clip(scenario.max_grad_norm)
    z = client_sampled_noise(target_epsilon=scenario.target_epsilon, sample_rate=q, rounds=scenario.rounds,
                             delta=scenario.delta)
    adaptive = None
    if scenario.adaptive_clipping:
        adaptive = AdaptiveClipping(count_noise=default_count_noise(expected_clients=q * scenario.num_clients,
                                                                    noise_multiplier=z))
    strategy = PoissonSampledDP(partition_to_node=partition_to_node, sample_rate=q, noise_multiplier=z,
                                clipping_norm=clip, delta=scenario.delta, adaptive=adaptive, **rngs)
    info = {"noise_multiplier": z, "max_grad_norm": clip, "sample_rate": q, "accountant": SAMPLED_CLIENT_ACCOUNTANT,
            "clipping": "server", "expected_clients": q * scenario.num_clients,
            "update_noise_multiplier": adaptive_update_noise(z, adaptive.count_noise) if adaptive else z}
    if adaptive is not None:
        info |= {"adaptive_clipping": True, "count_noise": adaptive.count_noise,
                 "target_quantile": adaptive.target_quantile, "clip_learning_rate": adaptive.learning_rate}
    return strategy, info

