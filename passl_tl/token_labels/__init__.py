"""Token labeling, the method's own parts: label files (``files``), packs of them (``pack``) and the
dataset's view of either (``store``); the packed sample layout (``packing``), soft targets
(``targets``) and MixToken (``mixtoken``); labels from a teacher (``generation``) and pictures of
them (``visualize``).

Modules are imported where used: models import ``mixtoken``, which must not pull in the rest.
"""
