"""A run's state as one pure fold of its events (see run.py); one section per phase."""

from agentnas.store.state.evals import EvalRecord, Evaluations
from agentnas.store.state.llm import LlmSection
from agentnas.store.state.phase1 import Arch, Attempt, Exploration, Phase1
from agentnas.store.state.run import ENDED, AgentState, RunState, fold, replay, status_after

__all__ = ["ENDED", "AgentState", "Arch", "Attempt", "EvalRecord", "Evaluations", "Exploration", "LlmSection",
           "Phase1", "RunState", "fold", "replay", "status_after"]
