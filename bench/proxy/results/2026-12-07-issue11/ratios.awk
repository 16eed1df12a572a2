{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]}
 if(v["test"]=="") next
 if(v["test"]=="http"){val=v["rps"]; cpu=v["cpu_us_per_req"]} else {val=v["per_s"]; cpu=v["cpu_ms_per_1000"]}
 r=v["round"]; t=v["test"]; b=v["bin"]; x[r" "t" "b]=val; c[r" "t" "b]=cpu; tests[t]=1; if(r>R)R=r; delete v}
function med(a,n,  i,j,t){for(i=2;i<=n;i++){t=a[i];for(j=i-1;j>=1&&a[j]>t;j--)a[j+1]=a[j];a[j+1]=t} return n%2?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2}
END{for(t in tests){n=0; na=0; nb=0; delete rs; delete va; delete vb; delete ca; delete cb
  for(r=1;r<=R;r++){ if((r" "t" A") in x && (r" "t" B") in x){ n++; rs[n]=x[r" "t" B"]/x[r" "t" A"]; va[n]=x[r" "t" A"]; vb[n]=x[r" "t" B"]; ca[n]=c[r" "t" A"]; cb[n]=c[r" "t" B"] } }
  printf "%s: A median %.0f (cpu %.1f), B median %.0f (cpu %.1f), B/A per round median %.3f over %d rounds\n", t, med(va,n), med(ca,n), med(vb,n), med(cb,n), med(rs,n), n }}
