"""Golden numbers for the RDT action expert: velocity, flow-matching loss, 5-step and one-step chunks.

The numbers were written down once from `reference_rdt` (the reference's equations in float64 numpy, gem_reference
§3-§5, sharing no code with gem_ros) on a seeded tiny RDT and fixed inputs, and checked in. Our model must reproduce
them to 1e-5 in float32. A change of the flow convention (target a - eps, x_t = t a + (1 - t) eps, Euler from t = 0
to 1) moves every one of them by far more than that: swapping the target sign or the x_t endpoints fails the loss,
reversing the sampler's time fails both chunks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reference_rdt as ref
from gem_ros.core.policy.action_expert import ActionExpert
from gem_ros.core.policy.config import RDTConfig

CFG = RDTConfig(hidden_size=16, depth=2, num_heads=4, num_kv_heads=2, num_register_tokens=2, ffn_multiple_of=8,
                timestep_freq_dim=8, cond_hidden_size=12)
ACTION_DIM, STATE_DIM, HORIZON = 3, 5, 4
ATOL = 1e-5   # float32 model vs float64 equations; measured worst case 4e-7

# Written down once by reference_rdt (module docstring); never regenerate them from gem_ros.
NOISE_DRAWS = np.array([
    -0.82013452,  0.39563116,  0.89890850,
    -1.38840389, -0.16699602,  0.28514996,
    -0.64109153, -0.89365542, -0.84890860,
    -1.21692944, -0.08102158,  1.36148512,
    -1.30321670,  0.08747838, -1.38496137,
     0.50356388, -0.86670160, -0.56400669,
    -2.05646253, -0.35672253,  1.09558046,
     0.48235416,  1.39891839,  1.40585291]).reshape(2, 4, 3)
T_DRAWS = np.array([0.85559249, 0.28537971])
VELOCITY = np.array([
    -0.11201304,  0.12186291, -0.09342033,
     0.27577507, -0.79378881, -0.14499119,
     0.41771756,  0.19843666,  0.23783931,
    -0.96687655, -1.26822850, -0.06179138,
    -1.05610107, -0.16559709,  0.46808618,
    -0.14958833, -0.75838670, -0.02578543,
     0.09855689,  0.19805378,  0.69379643,
    -0.57418433, -0.91360785, -0.27697435]).reshape(2, 4, 3)
LOSS = 1.8033982628
CHUNK_5_STEPS = np.array([
    -0.47661091, -0.12235488, -2.93371413,
     2.17004580, -0.51065175, -1.17981866,
     2.46846709,  0.74677068,  0.58688365,
    -1.42434945, -1.19517789, -1.60835624,
    -0.30774999, -0.31064167,  0.64752426,
     1.09037985, -0.47184435,  0.33521857,
     0.23950974, -0.52522192,  1.59209738,
     0.92223610, -0.21090855,  0.70292951]).reshape(2, 4, 3)
CHUNK_ONE_STEP = np.array([
    -0.43839964, -0.08758539, -2.87695774,
     2.22346444, -0.41273855, -1.19118791,
     2.43981041,  0.78230944,  0.68406162,
    -1.59346328, -1.16435819, -1.61152268,
    -0.49920181, -0.53709644,  0.74391494,
     1.07519499, -0.42613042,  0.34337097,
     0.18247656, -0.54150655,  1.63551177,
     0.91734564, -0.16299459,  0.67632010]).reshape(2, 4, 3)


def golden_case() -> dict:
    """Seeded weights and inputs, all from numpy's frozen legacy stream (identical on every machine)."""
    shapes = ref.reference_shapes(CFG.hidden_size, CFG.depth, CFG.num_heads, CFG.num_kv_heads, CFG.num_register_tokens,
                                  CFG.ffn_multiple_of, CFG.timestep_freq_dim, CFG.cond_hidden_size, ACTION_DIM,
                                  STATE_DIM, HORIZON)
    rng = np.random.RandomState(1)
    f32 = lambda a: a.astype(np.float32).astype(np.float64)   # noqa: E731 - the precision our model gets them in
    case = dict(weights=ref.seeded_weights(shapes, seed=0), hidden=f32(rng.standard_normal((2, CFG.depth, 5, 12))),
                state=f32(rng.standard_normal((2, STATE_DIM))), x=f32(rng.standard_normal((2, HORIZON, ACTION_DIM))))
    case["actions"] = f32(np.clip(rng.standard_normal((2, HORIZON, ACTION_DIM)) * 0.5, -1, 1))
    case["mask"] = np.array([[True] * 5, [True, True, True, False, False]])   # sample 1: two padded tokens
    case["t"] = np.array([0.3, 0.8])
    return case


@pytest.fixture(scope="module")
def case():
    return golden_case()


@pytest.fixture(scope="module")
def expert(case):
    expert = ActionExpert(CFG, ACTION_DIM, STATE_DIM, HORIZON)
    expert.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in case["weights"].items()}, strict=True)
    return expert.eval()


def tensors(case):
    t = lambda a: torch.tensor(a, dtype=torch.float32)   # noqa: E731
    return t(case["hidden"]), t(case["state"]), torch.tensor(case["mask"])


def test_the_equations_give_the_checked_in_numbers(case):
    """Guards the literals: they are what the reference equations compute (and the equations did not drift)."""
    args = case["hidden"], case["state"], case["mask"]
    np.testing.assert_allclose(ref.velocity(case["weights"], case["x"], case["t"], *args), VELOCITY, atol=1e-8)
    np.testing.assert_allclose(ref.euler_sample(case["weights"], case["x"], 5, *args), CHUNK_5_STEPS, atol=1e-8)
    np.testing.assert_allclose(ref.euler_sample(case["weights"], case["x"], 1, *args), CHUNK_ONE_STEP, atol=1e-8)
    loss = ref.flow_loss(case["weights"], case["actions"], NOISE_DRAWS.astype(np.float32).astype(np.float64),
                         T_DRAWS.astype(np.float32).astype(np.float64), *args)
    assert loss == pytest.approx(LOSS, abs=1e-8)


def test_our_state_dict_is_the_reference_layout(case):
    ours = {k: tuple(v.shape) for k, v in ActionExpert(CFG, ACTION_DIM, STATE_DIM, HORIZON).state_dict().items()}
    assert ours == {k: v.shape for k, v in case["weights"].items()}


def test_velocity(case, expert):
    hidden, state, mask = tensors(case)
    lang, state_token = expert.encode_condition(hidden, state)
    with torch.no_grad():
        v = expert.velocity(torch.tensor(case["x"], dtype=torch.float32), torch.tensor(case["t"], dtype=torch.float32),
                            lang, state_token, mask)
    np.testing.assert_allclose(v.numpy(), VELOCITY, atol=ATOL)


def test_flow_matching_loss(case, expert):
    """Noise then t come from the generator (as in the reference: noise, then timesteps); the draws are checked
    first, so a change in torch's random stream is told apart from a change in the loss."""
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn((2, HORIZON, ACTION_DIM), generator=generator)
    t = torch.sigmoid(torch.randn(2, generator=generator))
    np.testing.assert_allclose(noise.numpy(), NOISE_DRAWS, atol=1e-7, err_msg="torch's CPU random stream changed")
    np.testing.assert_allclose(t.numpy(), T_DRAWS, atol=1e-7, err_msg="torch's CPU random stream changed")
    hidden, state, mask = tensors(case)
    with torch.no_grad():
        loss = expert.loss(torch.tensor(case["actions"], dtype=torch.float32), hidden, state, mask,
                           generator=torch.Generator().manual_seed(7))
    assert loss.item() == pytest.approx(LOSS, abs=ATOL)


@pytest.mark.parametrize("steps, expected", [(5, CHUNK_5_STEPS), (1, CHUNK_ONE_STEP)], ids=["5_steps", "one_step"])
def test_sampled_chunk(case, expert, steps, expected):
    hidden, state, mask = tensors(case)
    chunk = expert.sample(hidden, state, mask, num_steps=steps, noise=torch.tensor(case["x"], dtype=torch.float32))
    np.testing.assert_allclose(chunk.numpy(), expected, atol=ATOL)
