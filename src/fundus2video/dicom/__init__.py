"""Clinical DICOM in, case folders out: `fundus2video data import-dicom SRC --out DIR`.

Colour fundus photos (CF) and fluorescein angiograms leave the cameras as Ophthalmic
Photography objects (8 or 16 bit). This package walks a folder of them, reads headers only,
groups the objects by patient (PatientID), study (StudyInstanceUID) and eye (ImageLaterality,
else Laterality), tells the colour photo (RGB / YBR_*) from the angiogram frames (MONOCHROME1/2),
orders the frames by acquisition time and writes the folders layout `cases.py` reads:

    DIR/<case>/cf.png, DIR/<case>/ffa/000.png ..., DIR/cases.csv (case_id, patient_id, eye, times)

Pixel data is decoded only for what is written, one read per object. Nothing is dropped
silently: the `Report` lists every eye found and every file left aside with its reason.
Patient data: cases.csv never holds names, birth dates, accession numbers or dates; with
`anonymize` the patient ids become keyed pseudonyms (HMAC-SHA256), and the mapping back is
written only to a file the user names, outside the output folder.

(objects.py: what is known of an object, an eye, the import, and the report; headers.py: reading
headers; plan.py: the cases planned from them; write.py: the import itself.)
"""

from fundus2video.dicom.headers import parse_dicom_datetime, pseudonym, read_header, safe_name
from fundus2video.dicom.objects import (
    DICOMDIR_SOP_CLASS,
    OP_8BIT,
    OP_16BIT,
    DicomImportError,
    DicomObject,
    Eye,
    PlannedFrame,
    Report,
    format_report,
)
from fundus2video.dicom.plan import choose_cf, order_frames, plan
from fundus2video.dicom.write import import_dicom

__all__ = ["DICOMDIR_SOP_CLASS", "OP_16BIT", "OP_8BIT", "DicomImportError", "DicomObject", "Eye", "PlannedFrame",
           "Report", "choose_cf", "format_report", "import_dicom", "order_frames", "parse_dicom_datetime", "plan",
           "pseudonym", "read_header", "safe_name"]
