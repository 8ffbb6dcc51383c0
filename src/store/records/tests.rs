use super::*;

#[test]
fn a_mark_range_is_open_below_and_closed_above() {
    let (a, b) = (ObjectId::new(), ObjectId::new());
    let all = claimed_between("r", None, None);
    assert_eq!(all, doc! {"exportRunId": "r", "status": "EXPORTING"});
    let range = claimed_between("r", Some(a), Some(b));
    assert_eq!(
        range.get_document("_id").unwrap(),
        &doc! {"$gt": a, "$lte": b}
    );
}

#[test]
fn the_first_id_of_a_time_sorts_before_every_id_made_since() {
    let now = DateTime::now();
    let first = first_id_at(now);
    assert!(first <= ObjectId::new());
    assert_eq!(
        first.timestamp().timestamp_millis(),
        now.timestamp_millis() / 1000 * 1000
    );
}

#[test]
fn a_stuck_row_counts_any_numeric_type_and_dates_by_id_when_needed() {
    let id = ObjectId::new();
    let row = doc! {"_id": "MER", "n": 3.0, "oldest": Bson::Null, "firstId": id};
    let stuck = stuck_row(&row);
    assert_eq!(stuck.count, 3);
    assert_eq!(stuck.oldest, Some(id.timestamp()));
}
