"""Pure flow-matching math (torch only): the sigma convention, schedules, leaps, gradient operators, rollout,
and the stochastic (SDE) steps of the policy-gradient family."""

from leapalign.flow.conventions import interpolate, velocity_target
from leapalign.flow.grad import scale_grad, straight_through
from leapalign.flow.leap import (
    euler_step,
    hinge_loss,
    leap,
    leap_distance,
    predict_x0,
    renoise,
    similarity_weight,
)
from leapalign.flow.rollout import Rollout, VelocityFn, sample
from leapalign.flow.schedule import (
    candidate_steps,
    exponential_shift,
    flux_mu,
    flux_sigmas,
    sample_leap_steps,
    sd3_sigmas,
    static_shift,
)
from leapalign.flow.sde import (
    SDE_SCHEDULES,
    SDEStep,
    SDETrajectory,
    check_sde,
    gaussian_log_prob,
    sample_sde,
    sde_step,
    step_log_prob,
    transition,
)

__all__ = [
    "SDE_SCHEDULES",
    "Rollout",
    "SDEStep",
    "SDETrajectory",
    "check_sde",
    "gaussian_log_prob",
    "sample_sde",
    "sde_step",
    "step_log_prob",
    "transition",
    "VelocityFn",
    "candidate_steps",
    "euler_step",
    "exponential_shift",
    "flux_mu",
    "flux_sigmas",
    "hinge_loss",
    "interpolate",
    "leap",
    "leap_distance",
    "predict_x0",
    "renoise",
    "sample",
    "sample_leap_steps",
    "scale_grad",
    "sd3_sigmas",
    "similarity_weight",
    "static_shift",
    "straight_through",
    "velocity_target",
]
