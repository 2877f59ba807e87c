"""What both sides of a federation say: imports neither `fedmed.fl.site` nor `fedmed.fl.server`.

- `messages`: message types, record keys, a site's hello, a refusal
- `instructions`: a message's `Instructions` (the federation config's sections and the round)
- `layout`: trainable tensors <-> one flat float32 vector (`Layout`), reading one from a message
- `secagg`: a secure_agg message in a Flower record, the round's setup and `SecAggConfig`, masked words
- `tensors`: what counts as a transmitted tensor for the audit logs, and the parties' names
- `sizes`: a message's serialized size, and a message as its receiver gets it
- `components`: the app bundle's contract (the components every party runs from its own fedmed)
"""
