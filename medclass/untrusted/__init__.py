"""The boundary for untrusted input: every byte medclass did not write in this run enters here.

A model file, manifest, image, prepared stream, sweep or run folder from someone else is *data*
(docs/reliability.md, the threat model). The readers in this package hold three rules for all of
them, so that no list of attacks is needed:

- **bound before reading**: a file is opened without following what it is not (FIFO, device,
  `/proc` entry, a link where links are not expected), its size is checked against a budget
  before a byte is read, and decoders check a header's declared size before allocating;
- **validate into types**: values become checked Python values (`medclass.utils.schema`) or
  typed objects, never objects a file chooses;
- **one error line**: every failure is a `MedclassError` naming the file, the field and what
  was expected, and never quoting the content of a file (`files.printable` escapes any text
  that does reach a console).

Nothing here imports Lightning, so a command can refuse a bad file before paying for it.
"""
