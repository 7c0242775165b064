"""The reviewers' queue on both databases: pairs first, newest first, nothing judged twice."""

from __future__ import annotations

from feedback import review
from store import conversations, judgments, users
from store.db import session_scope
from store.models import MessageRole, Response, Role, Thumb, Winner
from tests.test_store import make_turn


def test_pairs_come_first_then_single_answers_and_judged_items_leave_the_queue(database):
    with session_scope(database) as session:
        alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
        rita = users.get_or_create_user(session, external_id="slack:RITA", name="rita", role=Role.reviewer)
        _, _, (single,) = make_turn(session, alice, "What is a WAL?", answers=("a log",))
        _, prompt, pair = make_turn(session, alice, "What is MVCC?", answers=("versions", "locks"))

        task = review.next_task(session, rita)
        assert task.kind == "compare" and {r.id for r in task.responses} == {r.id for r in pair}
        assert task.prompt.id == prompt.id
        judgments.save_comparison(session, user=rita, response_a=pair[0], response_b=pair[1], winner=Winner.a,
                                  a_position=0)

        task = review.next_task(session, rita)
        assert task.kind == "rate" and task.responses == [single]
        judgments.save_rating(session, user=rita, response=single, thumb=Thumb.up)

        assert review.next_task(session, rita) is None
        assert review.next_task(session, alice).kind == "compare"  # each reviewer has their own queue


def test_a_task_carries_the_conversation_before_its_prompt(database):
    with session_scope(database) as session:
        alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
        rita = users.get_or_create_user(session, external_id="slack:RITA", name="rita", role=Role.reviewer)
        conversation, _, (first,) = make_turn(session, alice, "Hi", answers=("Hello!",))
        judgments.save_rating(session, user=rita, response=first, thumb=Thumb.up)
        follow = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user,
                                           content="What is WAL?")
        conversations.add_response(session, response=Response(conversation_id=conversation.id,
                                                               prompt_message_id=follow.id, text="A log."))

        task = review.next_task(session, rita)
        assert task.prompt.content == "What is WAL?"
        assert task.history == [("user", "Hi"), ("assistant", "Hello!")]


def test_agreement_counts_other_staffs_verdicts_on_the_same_items_whichever_way_round(database):
    with session_scope(database) as session:
        alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
        rita, sam, tom = (users.get_or_create_user(session, external_id=f"local:{n}", name=n, role=Role.reviewer)
                          for n in ("rita", "sam", "tom"))
        _, _, (single,) = make_turn(session, alice, "What is a WAL?", answers=("a log",))
        _, _, (first, second) = make_turn(session, alice, "What is MVCC?", answers=("versions", "locks"))
        judgments.save_comparison(session, user=rita, response_a=first, response_b=second, winner=Winner.a,
                                  a_position=0)
        # sam stored the pair the other way round and chose the same answer; tom chose the other one
        judgments.save_comparison(session, user=sam, response_a=second, response_b=first, winner=Winner.b,
                                  a_position=0)
        judgments.save_comparison(session, user=tom, response_a=first, response_b=second, winner=Winner.b,
                                  a_position=0)
        judgments.save_comparison(session, user=alice, response_a=first, response_b=second, winner=Winner.b,
                                  a_position=0)  # an end user's choice is not a reviewer's verdict
        judgments.save_rating(session, user=rita, response=single, thumb=Thumb.up)
        judgments.save_rating(session, user=sam, response=single, thumb=Thumb.down)

        assert review.agreement(session, rita) == (1, 3)  # sam on the pair; not tom on it, nor sam's thumb
        assert review.agreement(session, sam) == (1, 3)
        assert review.agreement(session, tom) == (0, 2)
