"""The hospital path: studies from a DICOMweb PACS and results stored back (:mod:`.dicomweb`), and a
local Orthanc for tests and workstations (:mod:`.orthanc`)."""
