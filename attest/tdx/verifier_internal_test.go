package tdx

import (
	"reflect"
	"testing"

	"github.com/google/go-tdx-guest/pcs"
)

func TestTCBClaims(t *testing.T) {
	got := tcbClaims(pcs.TcbLevel{TcbStatus: pcs.TcbComponentStatusUpToDate, TcbDate: "2024-03-13T00:00:00Z", AdvisoryIDs: []string{"INTEL-SA-00837"}})
	want := map[string]any{
		"tcb_status": "UpToDate", "tcb_date": "2024-03-13T00:00:00Z",
		"advisory_ids": []any{"INTEL-SA-00837"}, "collateral_expiration_status": "0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("tcbClaims = %v, want %v", got, want)
	}
	if ids := tcbClaims(pcs.TcbLevel{TcbStatus: "UpToDate"})["advisory_ids"]; !reflect.DeepEqual(ids, []any{}) {
		t.Fatalf("no advisories: advisory_ids = %#v, want []", ids)
	}
}
