"""Math as a multi-turn text environment: answer, be told whether it is correct, try again."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedlearn.data.records import Message
from feedlearn.tasks.math_data import MathProblem
from feedlearn.verifiers.math_answers import extract_boxed, score_answer
from feedlearn.verifiers.reasoning_gym_check import score_entry

WORKED_EXAMPLE = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "In May she sold 48/2 = 24 clips. Altogether she sold 48 + 24 = 72 clips. The answer is \\boxed{72}.",
)


class WorkedExample(BaseModel):
    """A solved problem shown to the model before its own."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The example's question.")
    answer: str = Field(description="Its worked answer, ending in \\boxed{}.")


class MathPrompt(BaseModel):
    """How problems are put to the model and what it is told after an attempt."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["one_message", "dialogue"] = Field(
        default="one_message",
        description="one_message: the instruction, the worked example and the question in one user message; "
        "dialogue (the reference's): the instruction with the example's question as the first user message, "
        "the example's answer as an assistant message, then `next_question` (needs `worked_example`).",
    )
    instruction: str = Field(
        default="Solve the following math problem step by step. Put your final answer in \\boxed{}.",
        description="Opens the first user message.",
    )
    worked_example: bool = Field(
        default=True, description="Show one worked example before the question (GSM8K style)."
    )
    example: WorkedExample = Field(
        default_factory=lambda: WorkedExample(question=WORKED_EXAMPLE[0], answer=WORKED_EXAMPLE[1]),
        description="The worked example shown when `worked_example` is true.",
    )
    next_question: str = Field(
        default="Great job! You've successfully answered the question. Now, let's move on to the next one."
        "\n{question}",
        description="dialogue layout: the user message after the example's answer, which asks the question; "
        "{question} is filled in.",
    )
    retry_message: str = Field(
        default="The answer is incorrect. Please try again. Here's the question: {question}",
        description="The user message after an attempt; {question} is filled in.",
    )

    @model_validator(mode="after")
    def _dialogue_needs_an_example(self):
        if self.layout == "dialogue" and not self.worked_example:
            raise ValueError(
                "layout 'dialogue' shows the worked example as its own turns: set worked_example"
            )
        return self

    def retry(self, question: str) -> str:
        """The retry message for `question` (only `{question}` is substituted; other braces stay)."""
        return self.retry_message.replace("{question}", question)

    def first_message(self, question: str) -> str:
        """The one user message of the one_message layout for `question`."""
        parts = [self.instruction]
        if self.worked_example:
            parts.append(f"Question: {self.example.question}\nAnswer: {self.example.answer}")
        parts.append(f"Question: {question}" if self.worked_example else question)
        return "\n\n".join(parts)

    def opening(self, question: str) -> list[Message]:
        """The conversation before the model's first attempt at `question`, in the prompt's layout."""
        if self.layout == "one_message":
            return [Message(role="user", content=self.first_message(question))]
        return [
            Message(role="user", content=f"{self.instruction}\n\n{self.example.question}"),
            Message(role="assistant", content=self.example.answer),
            Message(role="user", content=self.next_question.replace("{question}", question)),
        ]


def no_answer_reward(problem: MathProblem) -> float:
    """The reward of an output without a `\\boxed{}` answer: 0 on a MATH problem, -1 on any other (GSM8K,
    synthetic, reasoning-gym), as the reference's two environments score it (its environments/math.py,
    gsm8k.py)."""
    return 0.0 if problem.source == "math" else -1.0


class MathEnv:
    """One problem as an episode: `reset()` gives the opening user message, `step(answer)` scores it.

    Reward is 1 for a correct final answer (a reasoning-gym problem: by its own check), 0 for a wrong one;
    an output without a `\\boxed{}` answer scores -1, or 0 on a MATH problem (`no_answer_reward`). The next
    observation is the retry message. With `stop_on_success` (data collection) a correct answer ends the
    episode; without it (evaluation, no oracle) the model is asked to retry whatever it answered.
    """

    def __init__(
        self, problem: MathProblem, prompt: MathPrompt, max_turns: int, stop_on_success: bool = True
    ):
        self.problem = problem
        self.prompt = prompt
        self.max_turns = max_turns
        self.stop_on_success = stop_on_success
        self.turn = 0

    def reset(self, seed: int | None = None) -> tuple[str, dict]:
        """Start over; returns the user message that asks the question and an info dict with the problem id
        (`opening()` gives the whole conversation before the first attempt)."""
        self.turn = 0
        return self.opening()[-1].content, {"task_id": self.problem.id}

    def opening(self) -> list[Message]:
        """The conversation before the first attempt (see `MathPrompt.opening`)."""
        return self.prompt.opening(self.problem.question)

    def score(self, action: str) -> tuple[float, str | None]:
        """Reward and parsed answer of an action, without advancing the episode."""
        entry = self.problem.reasoning_gym
        if entry is None:
            reward, answer = score_answer(action, self.problem.answer)
        else:  # reasoning-gym's own check of the boxed answer
            answer = extract_boxed(action)
            reward = 0.0 if answer is None else score_entry(answer, entry)
        return (no_answer_reward(self.problem) if answer is None else reward), answer

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Score `action`; return (retry message, reward, terminated, truncated, info)."""
        reward, answer = self.score(action)
        self.turn += 1
        terminated = self.stop_on_success and reward == 1.0
        truncated = not terminated and self.turn >= self.max_turns
        feedback = self.prompt.retry(self.problem.question)
        info = {"answer": answer, "correct": reward == 1.0, "feedback": feedback}
        return feedback, reward, terminated, truncated, info
