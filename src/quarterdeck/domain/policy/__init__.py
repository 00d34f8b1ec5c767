"""Policy: which actions run, which are refused, and which wait for a human.

The spec is ``docs/specs/policy.md``. A policy is a TOML document of ordered rules (the first
that matches decides) and safety floors (which may only tighten the rules' outcome). The
package holds the data (:mod:`.model`), the parser that returns a policy or every problem found
(:mod:`.parsing`), the evaluation, a pure function of the policy, the request and the caller's
context (:mod:`.evaluation`), and how values compare (:mod:`.values`). The names below are the
policy's public face.
"""

from quarterdeck.domain.policy.evaluation import evaluate
from quarterdeck.domain.policy.model import (
    ANNOTATIONS_ARG,
    DEFAULT_APPROVER,
    DEFAULT_DEADLINE_S,
    DEFAULT_REJECT_REASONS,
    ActionRequest,
    Approval,
    ArgMatcher,
    CountFn,
    EvaluationContext,
    Floors,
    OnExpiry,
    Outcome,
    Policy,
    PolicyDecision,
    RateCap,
    Rule,
    Subject,
    TimeWindow,
    ToolList,
    TraceStep,
)
from quarterdeck.domain.policy.parsing import parse_policy, policy_hash

__all__ = [
    "ANNOTATIONS_ARG",
    "DEFAULT_APPROVER",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_REJECT_REASONS",
    "ActionRequest",
    "Approval",
    "ArgMatcher",
    "CountFn",
    "EvaluationContext",
    "Floors",
    "OnExpiry",
    "Outcome",
    "Policy",
    "PolicyDecision",
    "RateCap",
    "Rule",
    "Subject",
    "TimeWindow",
    "ToolList",
    "TraceStep",
    "evaluate",
    "parse_policy",
    "policy_hash",
]
