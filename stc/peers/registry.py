"""The one table of peer methods: name -> selector class. A new method is a module of
`stc.peers` and one row here."""

from __future__ import annotations

from stc.peers.base import Selector
from stc.peers.baselines import OracleSelector, RandomSelector, UniformSelector
from stc.peers.temporal import DyCokeSelector, EVSSelector, TimeChatSelector
from stc.peers.tome import ToMeSelector
from stc.peers.vidcom2 import VidCom2Selector
from stc.peers.visionzip import VisionZipSelector

PEER_METHODS: dict[str, type[Selector]] = {
    "tome": ToMeSelector,
    "visionzip": VisionZipSelector,
    "vidcom2": VidCom2Selector,
    "dycoke": DyCokeSelector,
    "timechat": TimeChatSelector,
    "evs": EVSSelector,
    "uniform": UniformSelector,
    "random": RandomSelector,
    "oracle": OracleSelector,
}
