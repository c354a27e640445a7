"""Post-training (spec §6): the Tülu 3 chat format, SFT / preference / RLVR data, the SFT, DPO, GRPO and
PPO losses, and the verifiers behind the RLVR reward.

Kept apart from pretraining because everything here is defined by the chat format: which tokens are
the prompt, which are the response, and which count in a loss. ``chat`` fixes that format once, so
training, generation and ``olmo2 chat`` cannot drift apart; ``losses`` is checked against TRL
(``tests/posttrain/test_losses_trl_parity.py``). See docs/posttrain.md.
"""
