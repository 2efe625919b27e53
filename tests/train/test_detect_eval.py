"""train/detect_eval.py: COCO results of the post-processed detections and COCO's mAP (faster-coco-eval)."""

from __future__ import annotations

import json

import pytest
import torch

from mobilecnn.models.ssd_boxes import Detections
from mobilecnn.train.detect_eval import coco_map, coco_results


def _gt() -> dict:
    images = [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100},
              {"id": 9, "file_name": "b.jpg", "width": 100, "height": 100}]
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [100, 20, 60, 60], "area": 3600, "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
            {"id": 4, "image_id": 9, "category_id": 5, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 1}]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]}


def test_coco_results_map_labels_to_category_ids_and_scale_boxes_to_pixels():
    det = Detections(torch.tensor([[0.05, 0.1, 0.3, 0.5]]), torch.tensor([0.9]), torch.tensor([2]))
    out = coco_results([det], [7], [(200, 100)], [3, 5])
    assert out == [{"image_id": 7, "category_id": 5, "bbox": [10.0, 10.0, 50.0, 40.0], "score": 0.9}]


def test_perfect_detections_score_100_and_crowd_is_ignored(tmp_path):
    gt = _gt()
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(gt))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"] if not a["iscrowd"]]
    # a detection on the crowd region is neither a true nor a false positive
    results.append({"image_id": 9, "category_id": 5, "bbox": [61, 61, 28, 28], "score": 0.95})
    scores = coco_map(path, results)
    assert scores["mAP"] == pytest.approx(100.0)
    assert scores["AP50"] == pytest.approx(100.0)
    assert scores["per_class_ap"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(100.0)}
    assert scores["images"] == 2 and scores["detections"] == 4


def test_a_missed_object_and_a_false_positive_lower_the_map():
    gt = _gt()
    results = [{"image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 40], "score": 0.9},
               {"image_id": 7, "category_id": 5, "bbox": [100, 20, 60, 60], "score": 0.9},
               {"image_id": 9, "category_id": 3, "bbox": [0, 0, 30, 30], "score": 0.99}]  # IoU 0.09: wrong
    scores = coco_map(gt, results)
    assert scores["per_class_ap"]["dog"] == pytest.approx(100.0)
    assert 0 < scores["per_class_ap"]["cat"] < 100
    assert scores["mAP"] < 100


def test_image_subset_and_empty_results():
    gt = _gt()
    only7 = [{"image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 40], "score": 0.9},
             {"image_id": 7, "category_id": 5, "bbox": [100, 20, 60, 60], "score": 0.9}]
    assert coco_map(gt, only7, image_ids=[7])["mAP"] == pytest.approx(100.0)
    assert coco_map(gt, only7)["mAP"] < 100
    empty = coco_map(gt, [])
    assert empty["mAP"] == 0.0 and empty["detections"] == 0
