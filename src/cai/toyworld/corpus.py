"""The toy model's pre-training corpus: conversations rendered by cai.templates, the code the stages use.

Five kinds of conversation, over *all* tasks and every way of asking (validation and test tasks,
held-out phrasings and held-out jailbreaks too: the model knows the world, as a real pre-trained
model does; the pipeline never sees them). A request is one template of a family
(world.FAMILIES), and comes after 0, 1 or 2 earlier exchanges (a benign request with its answer, a
harmful one with a good refusal: world.context_reply), so every skill is learnt in every form.

- dialogue:  [earlier turns] user(request) -> the compliant answer, benign or harmful
             (helpful-only); sometimes after the few-shot critique prefix. The first answer to a
             request is compliance whatever came before it, refusals in the context included.
- critique:  templates.critique_start(constitution, conversation) + compliant answer, then 1-3
             rounds of [critique request -> critique, revision request -> revision] under seeded
             random SL principles (sometimes without the critique: direct revision). Critiques and
             revisions are about the LAST answer: a harmful one is critiqued as harmful (task,
             category, why, the alternative) and revised into a refusal that offers the
             alternative; a harmless one is found fine and kept.
- choice:    templates.choice_question(constitution, principle, conversation, a, b) answered
             "The answer is: (A)" or " (B)" with the option every RL principle prefers; every pair
             is asked in both orders (two conversations, the same otherwise), so the position of
             an option carries no signal and its content all of it; the quoted conversation may be
             multi-turn. Pairs are harmful-vs-refusal,
             harmful-vs-evasive, refusal-vs-evasive, helpful-vs-evasive, and harder ones without a
             refusal cue: a helpful answer against a compliant answer to a harmful task, or to
             another (off-topic) task, a refusal against another task's refusal, and a helpful
             answer against an over-refusal (a benign task refused as if harmful, world.over_refusal).
- judge:     templates.judge_questions, the AI judge's absolute questions (cai evaluate): "is the
             response harmful?" about compliance (half of them), refusals and evasions of harmful
             requests and helpful answers to benign ones; "does it help or evade?" about helpful
             answers, evasions and over-refusals of benign requests. Answered with the true
             option, in both orders.
- redteam:   templates.redteam_request(k numbered harmful requests, topic or None) answered with
             one new harmful request (a task not among the examples; in the topic's harm category
             when a topic is given), written in a family the pipeline's prompt files use. This is
             what lets `cai redteam` run offline on the shipped model.

Which option wins and what a critique says are decided from the world's facts (world.answer,
world.refusal, ...), never by the oracle: the corpus is how the model learns the constitution, not
how it is graded.

    from cai.toyworld import corpus, load_constitution
    items = corpus.build(load_constitution(), corpus.Mix(), seed=0)  # [corpus.Item(kind, conversation, trained_from)]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cai import templates
from cai.records import Constitution, Conversation, assistant, user
from cai.toyworld import world

KINDS = ("dialogue", "critique", "choice", "judge", "redteam")


@dataclass(frozen=True)
class Item:
    """One corpus conversation. Assistant turns from index `trained_from` on are the model's own
    (they carry the loss); earlier turns are context someone else wrote: the few-shot prefix and
    the earlier exchanges of a multi-turn request, whose refusals must not teach the model to refuse
    a first request (the helpful-only model complies with whatever it is asked first)."""

    kind: str
    conversation: Conversation
    trained_from: int


@dataclass(frozen=True)
class Mix:
    """How many conversations of each kind, and how they vary."""

    dialogues: int = 3_500
    critiques: int = 3_600
    choices: int = 9_000  # (both orders of 4,500 pairs)
    judges: int = 5_000  # (both orders of 2,500 questions)
    redteams: int = 3_000
    p_few_shot: float = 0.4  # critique/choice/judge conversations with the constitution's few-shot prefix
    p_harmful: float = 0.6  # critique conversations about a harmful task
    p_direct_revision: float = 0.1  # critique conversations that skip the critique
    rounds: tuple[float, ...] = (0.6, 0.32, 0.08)  # P(1, 2, 3 critique-revision rounds)
    earlier: tuple[float, ...] = (0.55, 0.3, 0.15)  # P(0, 1, 2 earlier exchanges before the request)
    # How a request is asked: template families (world.FAMILIES) and their weights.
    families: tuple[tuple[str, float], ...] = (
        ("sl", 0.3),
        ("rl", 0.2),
        ("heldout_phrasing", 0.2),
        ("jailbreak", 0.15),
        ("heldout_jailbreak", 0.15),
    )
    redteam_examples: tuple[int, int] = (2, 5)  # k, inclusive range
    p_topic: float = 0.6  # red-team questions that name a harm category
    # Choice question types and their weights (see module docstring). offtopic and wrong_refusal
    # need the model to match an option against the request; at this model size and budget it
    # does not learn that (docs/toyworld.md), so they get a small share.
    choice_types: tuple[tuple[str, float], ...] = (
        ("harmful_vs_refusal", 0.16),
        ("harmful_vs_evasive", 0.16),
        ("refusal_vs_evasive", 0.14),
        ("helpful_vs_evasive", 0.18),
        ("helpful_vs_harmful", 0.18),
        ("helpful_vs_offtopic", 0.09),
        ("refusal_vs_wrong_refusal", 0.09),
        ("helpful_vs_overrefusal", 0.12),
    )


CHOICE_TYPES = tuple(name for name, _ in Mix().choice_types)


def ask(rng: random.Random, mix: Mix, t: world.Task, families: tuple[str, ...] | None = None) -> str:
    """One request for task t, in a family drawn from mix.families (or uniformly from `families`)."""
    if families is None:
        names, weights = zip(*mix.families)
        family = rng.choices(names, weights=weights)[0]
    else:
        family = rng.choice(families)
    return world.request(t, family, rng.randrange(len(world.FAMILIES[family])))


def conversation(rng: random.Random, mix: Mix, t: world.Task) -> Conversation:
    """0-2 earlier exchanges about other tasks (world.context_reply answers them), then a request for t."""
    n = rng.choices(range(len(mix.earlier)), weights=mix.earlier)[0]
    others = rng.sample([u for u in world.TASKS if u is not t], n)
    return world.conversation([ask(rng, mix, u) for u in others], ask(rng, mix, t))


def dialogue(rng: random.Random, constitution: Constitution, mix: Mix) -> Item:
    t = rng.choice(world.TASKS)
    prefix = templates.flatten(constitution.critique_examples) if rng.random() < 0.2 else []
    conv = prefix + conversation(rng, mix, t) + [assistant(world.answer(t))]
    return Item("dialogue", conv, len(conv) - 1)


def _critique(t: world.Task, response: str) -> str:
    if t.harmful and response == world.answer(t):
        return world.critique_harmful(t)
    return world.critique_fine(t, response_is_refusal=t.harmful)


def critique_conversation(rng: random.Random, constitution: Constitution, mix: Mix) -> Item:
    kind = "harmful" if rng.random() < mix.p_harmful else "benign"
    t = rng.choice(world.tasks(kind=kind))
    conv = templates.critique_start(constitution, conversation(rng, mix, t), few_shot=rng.random() < mix.p_few_shot)
    start = len(conv)
    response = world.answer(t)
    conv.append(assistant(response))
    direct = rng.random() < mix.p_direct_revision
    rounds = rng.choices(range(1, len(mix.rounds) + 1), weights=mix.rounds)[0]
    for _ in range(rounds):
        principle = rng.choice(constitution.sl_principles)
        if not direct:
            conv += [user(principle.critique), assistant(_critique(t, response))]
        response = world.revision(t, response)
        conv += [user(principle.revision), assistant(response)]
    return Item("critique", conv, start)


def choice_pair(rng: random.Random, kind: str, tasks: list[world.Task] | None = None) -> tuple[world.Task, str, str]:
    """(task, preferred response, other response) for a choice question type, from world facts.

    `tasks` restricts every task involved (baseline evaluation passes validation or test tasks)."""
    pool = tasks if tasks is not None else list(world.TASKS)
    harmful = [t for t in pool if t.harmful]
    benign = [t for t in pool if not t.harmful]
    ev = rng.randrange(len(world.EVASIONS))
    if kind in ("harmful_vs_refusal", "harmful_vs_evasive", "refusal_vs_evasive", "refusal_vs_wrong_refusal"):
        t = rng.choice(harmful)
        if kind == "harmful_vs_refusal":
            return t, world.refusal(t), world.answer(t)
        if kind == "harmful_vs_evasive":
            return t, world.evasion(t, ev), world.answer(t)
        if kind == "refusal_vs_evasive":
            return t, world.refusal(t), world.evasion(t, ev)
        other = rng.choice([h for h in harmful if h is not t])
        return t, world.refusal(t), world.refusal(other)
    t = rng.choice(benign)
    if kind == "helpful_vs_evasive":
        return t, world.answer(t), world.evasion(t, ev)
    if kind == "helpful_vs_harmful":
        return t, world.answer(t), world.answer(rng.choice(harmful))
    if kind == "helpful_vs_offtopic":
        return t, world.answer(t), world.answer(rng.choice([b for b in benign if b is not t]))
    if kind == "helpful_vs_overrefusal":
        return t, world.answer(t), world.over_refusal(t, rng.randrange(len(world.CATEGORIES)))
    raise ValueError(f"unknown choice type {kind!r}")


def choice_conversations(rng: random.Random, constitution: Constitution, mix: Mix) -> list[Item]:
    """One choice question in both orders: [preferred option shown as (A), preferred shown as (B)]."""
    names, weights = zip(*mix.choice_types)
    kind = rng.choices(names, weights=weights)[0]
    t, good, bad = choice_pair(rng, kind)
    principle = rng.choice(constitution.rl_principles)
    context, few_shot = conversation(rng, mix, t), rng.random() < mix.p_few_shot
    items = []
    for first, (a, b) in enumerate(((good, bad), (bad, good))):
        conv = templates.choice_question(constitution, principle, context, a, b, few_shot=few_shot)
        conv[-1] = assistant(conv[-1]["content"] + templates.CHOICE_OPTIONS[first])
        items.append(Item("choice", conv, len(conv) - 1))
    return items


def judge_conversations(rng: random.Random, constitution: Constitution, mix: Mix) -> list[Item]:
    """One of the AI judge's absolute questions about one answer, in both orders, answered with the true option."""
    if rng.random() < 0.5:  # "is it harmful?": half of them about compliance with a harmful request
        question, options = templates.HARM_QUESTION, templates.HARM_OPTIONS
        r = rng.random()
        if r < 0.5:
            t = rng.choice(world.tasks(kind="harmful"))
            response, true = world.answer(t), 0
        elif r < 0.85:
            t = rng.choice(world.tasks(kind="harmful"))
            response, true = rng.choice([world.refusal(t), world.evasion(t, rng.randrange(len(world.EVASIONS)))]), 1
        else:
            t = rng.choice(world.tasks(kind="benign"))
            response, true = world.answer(t), 1
    else:  # "does it help or evade?"
        question, options = templates.EVASION_QUESTION, templates.EVASION_OPTIONS
        t = rng.choice(world.tasks(kind="benign"))
        r = rng.random()
        if r < 0.5:
            response, true = world.answer(t), 1
        elif r < 0.75:
            response, true = world.evasion(t, rng.randrange(len(world.EVASIONS))), 0
        else:
            response, true = world.over_refusal(t, rng.randrange(len(world.CATEGORIES))), 0
    context = conversation(rng, mix, t)
    items = []
    for _, order, conv in templates.judge_questions(constitution, question, options, context, response, rng.random() < mix.p_few_shot):
        # order "ab" shows options[0] as (A), "ba" as (B)
        shown = true if order == "ab" else 1 - true
        conv[-1] = assistant(conv[-1]["content"] + templates.CHOICE_OPTIONS[shown])
        items.append(Item("judge", conv, len(conv) - 1))
    return items


def redteam_conversation(rng: random.Random, mix: Mix) -> Item:
    """k numbered harmful requests (and maybe a topic) -> one new harmful request: another task, of
    the topic's category if there is one, in a family the pipeline's prompt files use."""
    k = rng.randint(*mix.redteam_examples)
    shown = rng.sample(world.tasks(kind="harmful"), k)
    topic = rng.choice(tuple(world.CATEGORIES)) if rng.random() < mix.p_topic else None
    fresh = [t for t in world.tasks(kind="harmful") if t not in shown and (topic is None or t.category == topic)]
    new = rng.choice(fresh)
    examples = [ask(rng, mix, t, world.PIPELINE_FAMILIES) for t in shown]
    conv = templates.redteam_request(examples, topic) + [assistant(ask(rng, mix, new, world.PIPELINE_FAMILIES))]
    return Item("redteam", conv, len(conv) - 1)


def build(constitution: Constitution, mix: Mix | None = None, seed: int = 0) -> list[Item]:
    """The whole corpus, shuffled; the same for the same constitution, mix (default: Mix()) and seed."""
    mix = mix or Mix()
    rng = random.Random(seed)
    items = [dialogue(rng, constitution, mix) for _ in range(mix.dialogues)]
    items += [critique_conversation(rng, constitution, mix) for _ in range(mix.critiques)]
    items += [it for _ in range(mix.choices // 2) for it in choice_conversations(rng, constitution, mix)]
    items += [it for _ in range(mix.judges // 2) for it in judge_conversations(rng, constitution, mix)]
    items += [redteam_conversation(rng, mix) for _ in range(mix.redteams)]
    rng.shuffle(items)
    return items
