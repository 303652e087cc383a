"""fal.ai, one small module per concern.

- ``client``: the queue API behind the ``Provider`` interface (``FalProvider``);
- ``arguments``: the input each model takes (``FAL_INPUTS``, ``fal_arguments``);
- ``responses``, ``results``: fal's answers and failures read as ours;
- ``verification``: whether fal signed a webhook (its keys, ``JwksCache``),
  and what the webhook says (``parse_webhook``);
- ``webhooks``: the use case of a delivery (``FalWebhooks``: verify, record
  once, wake the job), its SQL in ``repository``.
"""
